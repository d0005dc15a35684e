package cache

import (
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/tokencache/tokencache/polyv"
)

// Token is a cached Polyv token with its times.
type Token struct {
	Token            string `json:"token" msgpack:"t"`
	MediaChannelKey  string `json:"mediaChannelKey" msgpack:"m"`
	RoomID           string `json:"roomId,omitempty" msgpack:"r,omitempty"`
	ChildRoomEnabled string `json:"childRoomEnabled,omitempty" msgpack:"c,omitempty"`
	ChatAPIDomain    string `json:"chatApiDomain,omitempty" msgpack:"a,omitempty"`
	ChatDomain       string `json:"chatDomain,omitempty" msgpack:"d,omitempty"`
	// IssuedAt is when the Polyv call was sent.
	IssuedAt time.Time `json:"issuedAt" msgpack:"i"`
	// Rendered is shared by every copy of this token while it is cached,
	// so that a caller can encode it once (as an HTTP body) and reuse that.
	Rendered *Rendered `json:"-" msgpack:"-"`
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
	Endpoint string `json:"endpoint" msgpack:"e"`
	Code     int    `json:"code" msgpack:"c"`
	Message  string `json:"message" msgpack:"m"`
}

func (r *rejection) err() error {
	return &polyv.APIError{Endpoint: r.Endpoint, HTTPStatus: 200, Code: r.Code, Message: r.Message}
}

// entry is what one Redis value key holds: a token or a rejection, and when
// it stops being usable.
type entry struct {
	Token    *Token     `json:"t,omitempty" msgpack:"t,omitempty"`
	Rejected *rejection `json:"neg,omitempty" msgpack:"n,omitempty"`
	// Until is the end of the entry's life: the cache TTL for a token, the
	// negative TTL for a rejection.
	Until time.Time `json:"until" msgpack:"u"`
	// Mark is the identity's delete mark (see redisKeys.mark) when the fetch
	// began: a value whose mark is older than the identity's is from before
	// a DELETE, put back (RESTORE), and is never served. Sealed with the
	// token when encryption is on.
	Mark int64 `json:"-" msgpack:"d,omitempty"`
}

// entryFormat starts every stored entry: MessagePack follows. It decodes
// 3 times faster than the JSON of the first release, which starts
// with '{' and is still read, so that instances of both releases can share
// Redis during a rolling update.
const entryFormat = 2

func (e *entry) encode() []byte {
	b, _ := msgpack.Marshal(e) // plain structs of strings and times cannot fail
	return append([]byte{entryFormat}, b...)
}

// decodeEntry returns the entry in b, or ok=false for anything it cannot
// trust: another format, corrupt bytes, or neither token nor rejection. The
// caller treats that as a miss and overwrites it.
func decodeEntry(b []byte) (e entry, ok bool) {
	switch {
	case len(b) > 0 && b[0] == entryFormat:
		if msgpack.Unmarshal(b[1:], &e) != nil {
			return entry{}, false
		}
	case len(b) > 0 && b[0] == '{':
		var old struct {
			entry
			Version int `json:"v"`
		}
		if json.Unmarshal(b, &old) != nil || old.Version != 1 {
			return entry{}, false
		}
		e = old.entry
	default:
		return entry{}, false
	}
	if e.Until.IsZero() || (e.Token == nil) == (e.Rejected == nil) {
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
		b = c.sealer.Seal(redisKey, b)
	}
	return b
}

// decode reverses encode. A value no key opens is counted and reported as
// not found, so that it is fetched again and overwritten.
func (c *Cache) decode(redisKey string, b []byte) (entry, bool) {
	if c.sealer != nil {
		plain, err := c.sealer.Open(redisKey, b)
		if err != nil {
			c.metrics.unopenable.Inc()
			return entry{}, false
		}
		b = plain
	}
	return decodeEntry(b)
}
