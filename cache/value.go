package cache

import (
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/tokencache/tokencache/polyv"
)

// Token is a cached Polyv token with its times.
type Token struct {
	Token            string `json:"token"`
	MediaChannelKey  string `json:"mediaChannelKey"`
	RoomID           string `json:"roomId,omitempty"`
	ChildRoomEnabled string `json:"childRoomEnabled,omitempty"`
	ChatAPIDomain    string `json:"chatApiDomain,omitempty"`
	ChatDomain       string `json:"chatDomain,omitempty"`
	// IssuedAt is when the Polyv call was sent.
	IssuedAt time.Time `json:"issuedAt"`
	// Rendered is shared by every copy of this token while it is cached,
	// so that a caller can encode it once (as an HTTP body) and reuse that.
	Rendered *Rendered `json:"-"`
}

// Rendered holds one rendering of a token, computed by whoever needs it
// first. The zero value is empty; a nil *Rendered stays empty.
type Rendered struct{ p atomic.Pointer[[]byte] }

// Load returns the rendering, or nil.
func (r *Rendered) Load() []byte {
	if r == nil {
		return nil
	}
	if b := r.p.Load(); b != nil {
		return *b
	}
	return nil
}

// Store keeps b as the rendering.
func (r *Rendered) Store(b []byte) {
	if r != nil {
		r.p.Store(&b)
	}
}

// ExpiresAt is when Polyv stops accepting the token.
func (t Token) ExpiresAt() time.Time { return t.IssuedAt.Add(polyv.TokenValidity) }

// rejection is a remembered Polyv refusal of one request.
type rejection struct {
	Endpoint string `json:"endpoint"`
	Code     int    `json:"code"`
	Message  string `json:"message"`
}

func (r *rejection) err() error {
	return &polyv.APIError{Endpoint: r.Endpoint, HTTPStatus: 200, Code: r.Code, Message: r.Message}
}

// entry is what one Redis value key holds: a token or a rejection, and when
// it stops being usable.
type entry struct {
	Version  int        `json:"v"`
	Token    *Token     `json:"t,omitempty"`
	Rejected *rejection `json:"neg,omitempty"`
	// Until is the end of the entry's life: the cache TTL for a token, the
	// negative TTL for a rejection.
	Until time.Time `json:"until"`
}

const entryVersion = 1

func (e *entry) encode() []byte {
	e.Version = entryVersion
	b, _ := json.Marshal(e) // plain structs of strings and times cannot fail
	return b
}

// decodeEntry returns the entry in b, or ok=false for anything it cannot
// trust: another version, corrupt bytes, or neither token nor rejection. The
// caller treats that as a miss and overwrites it.
func decodeEntry(b []byte) (e entry, ok bool) {
	if err := json.Unmarshal(b, &e); err != nil || e.Version != entryVersion || e.Until.IsZero() {
		return entry{}, false
	}
	if (e.Token == nil) == (e.Rejected == nil) {
		return entry{}, false
	}
	if e.Token != nil && (e.Token.Token == "" || e.Token.IssuedAt.IsZero()) {
		return entry{}, false
	}
	if e.Token != nil {
		e.Token.Rendered = new(Rendered)
	}
	return e, true
}

// encode is e as stored under redisKey: sealed when encryption is on.
func (c *Cache) encode(redisKey string, e entry) []byte {
	b := e.encode()
	if c.sealer != nil {
		b = c.sealer.seal(redisKey, b)
	}
	return b
}

// decode reverses encode. A value no key opens is counted and reported as
// not found, so that it is fetched again and overwritten.
func (c *Cache) decode(redisKey string, b []byte) (entry, bool) {
	if c.sealer != nil {
		plain, err := c.sealer.open(redisKey, b)
		if err != nil {
			c.metrics.unopenable.Inc()
			return entry{}, false
		}
		b = plain
	}
	return decodeEntry(b)
}
