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
		return invalid("origin", "origin must be 1-32 characters of A-Z, a-z, 0-9, '_' or '-'")
	}
	return nil
}

// hasControl reports control characters, and format characters (Cf: bidi
// overrides, zero-width spaces) that make one id look like another.
func hasControl(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return true
		}
	}
	return false
}

// onlyParams refuses a query parameter not in known: a typo such as
// orign=web must not quietly issue a token without an origin.
func onlyParams(q url.Values, known ...string) error {
	for name := range q {
		if !slices.Contains(known, name) {
			msg := fmt.Sprintf("unknown query parameter %q", capped(name))
			if len(known) > 0 {
				msg += "; the parameters are " + strings.Join(known, ", ")
			}
			return invalid(capped(name), msg)
		}
	}
	return nil
}

// queryValue returns a query parameter that may appear at most once.
func queryValue(q url.Values, name string) (string, error) {
	v := q[name]
	switch len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	}
	return "", invalid(name, name+" must be given once")
}

// chatKeyFromQuery reads and validates channelId from the path and
// userId, role and origin from the query: the key of the token asked for.
func chatKeyFromQuery(channelID string, q url.Values) (cache.Key, error) {
	if err := onlyParams(q, "userId", "role", "origin"); err != nil {
		return cache.Key{}, err
	}
	r := cache.Key{ChannelID: channelID}
	var err error
	for _, f := range []struct {
		name string
		dst  *string
	}{{"userId", &r.UserID}, {"role", &r.Role}, {"origin", &r.Origin}} {
		if *f.dst, err = queryValue(q, f.name); err != nil {
			return cache.Key{}, err
		}
	}
	return r, validateChat(r)
}
