package httpapi

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/polyv"
)

// Limits of the request fields.
const (
	maxChannelID = 64
	maxUserID    = 256 // bytes
	maxOrigin    = 32
	maxBulk      = 1000
)

func isIDChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

func isID(s string, maxLen int) bool {
	if len(s) == 0 || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isIDChar(s[i]) {
			return false
		}
	}
	return true
}

func validateChannelID(id string) error {
	if !isID(id, maxChannelID) {
		return invalid("channelId", "channelId must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
	}
	return nil
}

// validateChat checks a chat-token request's fields in order and returns the
// first problem.
func validateChat(r cache.Key) error {
	if err := validateChannelID(r.ChannelID); err != nil {
		return err
	}
	switch {
	case r.UserID == "":
		return invalid("userId", "userId is required")
	case len(r.UserID) > maxUserID:
		return invalid("userId", "userId must be at most 256 bytes")
	case !utf8.ValidString(r.UserID):
		return invalid("userId", "userId must be valid UTF-8")
	case hasControl(r.UserID):
		return invalid("userId", "userId must not contain control or invisible format characters")
	case strings.TrimSpace(r.UserID) == "":
		return invalid("userId", "userId must contain a character that is not white space")
	}
	if r.Role == "" {
		return invalid("role", "role is required: one of teacher, admin, guest, assistant, viewer")
	}
	if !slices.Contains(polyv.Roles, r.Role) {
		return invalid("role", "role must be one of teacher, admin, guest, assistant, viewer")
	}
	if r.Origin != "" && !isID(r.Origin, maxOrigin) {
		return invalid("origin", "origin must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-' (or empty or absent: none)")
	}
	return nil
}

// hasControl reports control characters, format characters (Cf: bidi
// overrides, zero-width spaces), and the other characters that show as
// nothing (see invisible), which make one id look like another.
func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || invisible[r] {
			return true
		}
	}
	return false
}

// invisible are letters and symbols that render as blank: the Hangul
// fillers, the blank Braille pattern, and U+FFFD, which a JSON decoder puts
// in place of a broken surrogate.
var invisible = map[rune]bool{'\u115f': true, '\u1160': true, '\u3164': true, '\uffa0': true, '\u2800': true, '\ufffd': true}

// chatParams are the query parameters of the chat-token routes.
var chatParams = []string{"userId", "role", "origin"}

// readQuery reads a raw query's parameters named in names into the dst of
// the same index, each given at most once. It refuses, naming the
// parameter, any other parameter (a typo such as orign=web must not quietly
// issue a token without an origin), a repeated one, a bad escape and a ';'
// separator, all of which url.ParseQuery would drop in silence. It builds no
// url.Values: a plain query costs no allocation.
func readQuery(raw string, names []string, dst ...*string) error {
	seen := 0 // bit i: names[i] was given
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" {
			continue
		}
		if strings.Contains(pair, ";") {
			return invalid("query", "the query must separate parameters with '&', not ';'")
		}
		name, value, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(name)
		if err != nil {
			return invalid("query", "the query has an invalid escape in a parameter name")
		}
		i := slices.Index(names, name)
		switch {
		case i < 0:
			msg := fmt.Sprintf("unknown query parameter %q", capped(name))
			if len(names) > 0 {
				msg += "; the parameters are " + strings.Join(names, ", ")
			}
			return invalid(capped(name), msg)
		case seen&(1<<i) != 0:
			return invalid(name, name+" must be given once")
		}
		seen |= 1 << i
		if *dst[i], err = url.QueryUnescape(value); err != nil {
			return invalid(name, name+" has an invalid escape")
		}
	}
	return nil
}

// chatKeyFromQuery reads and validates channelId from the path and
// userId, role and origin from the query: the key of the token asked for.
func chatKeyFromQuery(channelID, rawQuery string) (cache.Key, error) {
	k := cache.Key{ChannelID: channelID}
	if err := readQuery(rawQuery, chatParams, &k.UserID, &k.Role, &k.Origin); err != nil {
		return cache.Key{}, err
	}
	return k, validateChat(k)
}
