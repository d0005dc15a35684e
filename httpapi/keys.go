package httpapi

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/tokencache/tokencache/polyv"
)

// The routes a key's scope can name.
const (
	RouteGet    = "get"    // GET a chat token
	RouteBulk   = "bulk"   // POST bulk chat tokens
	RouteDelete = "delete" // DELETE a chat token
	RouteLegacy = "legacy" // GET the old channel token
)

var allRoutes = []string{RouteGet, RouteBulk, RouteDelete, RouteLegacy}

// APIKey is one caller's key and what it may do. A nil list allows all.
type APIKey struct {
	Name     string
	hash     [sha256.Size]byte
	Channels []string // exact ids, or prefixes ending in *
	Roles    []string
	Routes   []string
	Rate     int // Polyv fetches per second its requests may cause, fleet-wide; 0: no cap of its own
}

// allowsRoute, allowsChannel and allowsRole check one part of the scope.
// The channel-wide legacy token is Polyv's authorization and mic-link
// token, a host's privilege: a key without routes may have it only if its
// roles are absent or include teacher or admin.
func (k *APIKey) allowsRoute(route string) bool {
	if route == RouteLegacy && k.Routes == nil {
		return k.Roles == nil || slices.Contains(k.Roles, "teacher") || slices.Contains(k.Roles, "admin")
	}
	return k.Routes == nil || slices.Contains(k.Routes, route)
}
func (k *APIKey) allowsRole(role string) bool {
	return k.Roles == nil || slices.Contains(k.Roles, role)
}

func (k *APIKey) allowsChannel(channelID string) bool {
	if k.Channels == nil {
		return true
	}
	for _, c := range k.Channels {
		if prefix, ok := strings.CutSuffix(c, "*"); ok && strings.HasPrefix(channelID, prefix) || c == channelID {
			return true
		}
	}
	return false
}

// KeySet is an immutable set of API keys.
type KeySet struct {
	keys      []APIKey
	plaintext bool // a keys file gave a key itself, not its sha256
}

// HoldsPlaintext reports whether the file the set was read from holds a key
// itself (key:), not only digests (sha256:).
func (ks *KeySet) HoldsPlaintext() bool { return ks != nil && ks.plaintext }

// Len is the number of keys; a nil set has none.
func (ks *KeySet) Len() int {
	if ks == nil {
		return 0
	}
	return len(ks.keys)
}

// Names lists the keys' names, for metrics and logs.
func (ks *KeySet) Names() []string {
	names := make([]string, len(ks.keys))
	for i, k := range ks.keys {
		names[i] = k.Name
	}
	return names
}

// lookup returns the key whose hash matches presented's. It hashes the
// presented key once and compares it with every key in constant time, so a
// wrong key costs the same as a right one.
func (ks *KeySet) lookup(presented string) (*APIKey, bool) {
	h := sha256.Sum256([]byte(presented))
	found := -1
	for i := range ks.keys {
		eq := subtle.ConstantTimeCompare(h[:], ks.keys[i].hash[:])
		found = subtle.ConstantTimeSelect(eq, i, found)
	}
	if found < 0 {
		return nil, false
	}
	return &ks.keys[found], true
}

// KeysFromList returns unrestricted keys named env-1, env-2, ... as
// TOKENCACHE_API_KEYS gives them.
func KeysFromList(keys []string) *KeySet {
	ks := &KeySet{}
	for i, k := range keys {
		ks.keys = append(ks.keys, APIKey{Name: fmt.Sprintf("env-%d", i+1), hash: sha256.Sum256([]byte(k))})
	}
	return ks
}

// Join returns the keys of both sets; it fails on a name or key in both.
func (ks *KeySet) Join(other *KeySet) (*KeySet, error) {
	out := &KeySet{keys: slices.Concat(ks.keys, other.keys)}
	if problems := out.duplicates(); len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return out, nil
}

func (ks *KeySet) duplicates() []string {
	var problems []string
	names := map[string]bool{}
	hashes := map[[sha256.Size]byte]string{}
	for _, k := range ks.keys {
		if names[k.Name] {
			problems = append(problems, fmt.Sprintf("key %q: the name is used twice", k.Name))
		}
		names[k.Name] = true
		if other, ok := hashes[k.hash]; ok {
			problems = append(problems, fmt.Sprintf("key %q: the same key as %q", k.Name, other))
		}
		hashes[k.hash] = k.Name
	}
	return problems
}

// keysFile is the YAML form of TOKENCACHE_API_KEYS_FILE.
type keysFile struct {
	Keys []struct {
		Name     string    `yaml:"name"`
		SHA256   string    `yaml:"sha256"`
		Key      string    `yaml:"key"`
		Channels *[]string `yaml:"channels"`
		Roles    *[]string `yaml:"roles"`
		Routes   *[]string `yaml:"routes"`
		Rate     *int      `yaml:"rate"`
	} `yaml:"keys"`
}

var (
	keyNamePattern = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)
	channelPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}\*?$|^\*$`)
)

// ParseKeysFile reads a keys file. The error names every problem, one per
// line, and never quotes a key.
func ParseKeysFile(data []byte) (*KeySet, error) {
	var f keysFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, yamlProblems(err)
	}
	if len(f.Keys) == 0 {
		return nil, errors.New("no keys: the file must hold keys: [{name, sha256}, ...]")
	}
	ks := &KeySet{}
	var problems []string
	for i, fk := range f.Keys {
		k := APIKey{Name: fk.Name}
		where := fmt.Sprintf("key %d (%q)", i+1, fk.Name)
		bad := func(format string, args ...any) { problems = append(problems, where+": "+fmt.Sprintf(format, args...)) }
		if !keyNamePattern.MatchString(fk.Name) {
			bad("name must be 1-32 of a-z, 0-9, _ and -")
		}
		switch {
		case fk.SHA256 != "" && fk.Key != "":
			bad("give sha256 or key, not both")
		case fk.SHA256 != "":
			b, err := hex.DecodeString(fk.SHA256)
			if err != nil || len(b) != sha256.Size {
				bad("sha256 must be 64 hex digits, the SHA-256 of the key")
			}
			copy(k.hash[:], b)
		case fk.Key != "":
			k.hash = sha256.Sum256([]byte(fk.Key))
			ks.plaintext = true
		default:
			bad("needs sha256 (recommended) or key")
		}
		var err error
		if k.Channels, err = scopeList(fk.Channels, func(c string) bool { return channelPattern.MatchString(c) }); err != nil {
			bad("channels: %v", err)
		}
		if k.Roles, err = scopeList(fk.Roles, func(r string) bool { return slices.Contains(polyv.Roles, r) }); err != nil {
			bad("roles: %v (roles are %s)", err, strings.Join(polyv.Roles, ", "))
		}
		if k.Routes, err = scopeList(fk.Routes, func(r string) bool { return slices.Contains(allRoutes, r) }); err != nil {
			bad("routes: %v (routes are %s)", err, strings.Join(allRoutes, ", "))
		}
		if fk.Rate != nil {
			if *fk.Rate <= 0 {
				bad("rate must be a positive number of Polyv fetches per second")
			}
			k.Rate = *fk.Rate
		}
		ks.keys = append(ks.keys, k)
	}
	problems = append(problems, ks.duplicates()...)
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return ks, nil
}

var (
	unknownField = regexp.MustCompile(`field (\S+) not found in type .*`)
	wrongType    = regexp.MustCompile("cannot unmarshal !!(\\w+)(?: `[^`]*`)? into (.*)")
	quotedValue  = regexp.MustCompile("`[^`]*`")
)

// yamlProblems words the YAML decoder's errors one per line, in the file's
// terms rather than Go's, and without quoting a value: it might be a key.
func yamlProblems(err error) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return fmt.Errorf("not a keys file: %s", quotedValue.ReplaceAllString(err.Error(), "a value"))
	}
	lines := make([]string, len(te.Errors))
	for i, e := range te.Errors {
		e = unknownField.ReplaceAllString(e, `unknown field "$1" (a key has name, sha256, key, channels, roles, routes, rate)`)
		if m := wrongType.FindStringSubmatchIndex(e); m != nil {
			found, want := e[m[2]:m[3]], e[m[4]:m[5]]
			e = e[:m[0]] + fmt.Sprintf("expected %s, found %s", yamlWant(want), yamlTag(found))
		}
		lines[i] = "keys file, " + quotedValue.ReplaceAllString(e, "a value")
	}
	return errors.New(strings.Join(lines, "\n"))
}

// yamlWant names the Go type a value was to fill in the file's terms.
func yamlWant(goType string) string {
	switch {
	case goType == "int":
		return "a whole number"
	case goType == "string":
		return "text"
	case goType == "[]string":
		return "a list"
	case strings.HasPrefix(goType, "[]struct"):
		return "the list of keys"
	case strings.HasPrefix(goType, "struct"):
		return "a key: {name, sha256 or key, ...}"
	default:
		return "a map holding keys: [...]"
	}
}

// yamlTag names a YAML tag in words.
func yamlTag(tag string) string {
	switch tag {
	case "str":
		return "text"
	case "int", "float":
		return "a number"
	case "seq":
		return "a list"
	case "map":
		return "a map"
	default:
		return tag
	}
}

// scopeList checks a scope list: absent means no restriction, present must
// be non-empty and hold only valid entries.
func scopeList(list *[]string, valid func(string) bool) ([]string, error) {
	if list == nil {
		return nil, nil
	}
	if len(*list) == 0 {
		return nil, errors.New("an empty list allows nothing; leave the field out to allow all")
	}
	for _, v := range *list {
		if !valid(v) {
			return nil, fmt.Errorf("%q is not valid", v)
		}
	}
	return *list, nil
}

// Keys holds the key set in force; Store swaps in a new one, as a reload
// does, without stopping requests.
type Keys struct {
	p        atomic.Pointer[KeySet]
	stale    atomic.Pointer[staleKeys]
	loadedAt atomic.Int64 // Unix ns of the keys in force
	failures atomic.Int64 // failed reloads
}

// staleKeys says since when, and why, the keys file could not be reloaded.
type staleKeys struct {
	since  time.Time
	reason string
}

// NewKeys returns Keys holding ks.
func NewKeys(ks *KeySet) *Keys {
	k := &Keys{}
	k.Store(ks)
	return k
}

// Store replaces the key set; the keys are current again.
func (k *Keys) Store(ks *KeySet) {
	k.p.Store(ks)
	k.stale.Store(nil)
	k.loadedAt.Store(time.Now().UnixNano())
}

// MarkStale records that a reload failed for reason: the keys in force stay,
// stale since the first failure in a row.
func (k *Keys) MarkStale(reason string) {
	k.failures.Add(1)
	since := time.Now()
	if old := k.stale.Load(); old != nil {
		since = old.since
	}
	k.stale.Store(&staleKeys{since: since, reason: reason})
}

// collectors export the reloads: failures, and when the keys in force were
// read, whose age an alert watches.
func (k *Keys) collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "tokencache_keys_reload_errors_total",
			Help: "Checks of the API keys file that failed to reload it; the keys loaded before stay in force."},
			func() float64 { return float64(k.failures.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "tokencache_keys_loaded_timestamp_seconds",
			Help: "When the API keys in force were read (Unix time)."},
			func() float64 { return float64(k.loadedAt.Load()) / 1e9 }),
	}
}

// Status is "ok", or "keys: stale since <time>: <reason>" after a failed
// reload, for /readyz.
func (k *Keys) Status() string {
	if k == nil {
		return "ok"
	}
	s := k.stale.Load()
	if s == nil {
		return "ok"
	}
	return "keys: stale since " + s.since.UTC().Format(time.RFC3339) + ": " + s.reason
}

// Load returns the key set in force.
func (k *Keys) Load() *KeySet { return k.p.Load() }
