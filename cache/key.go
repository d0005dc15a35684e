package cache

import (
	"errors"
	"net/url"
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Kind says which Polyv token a Key names.
type Kind uint8

// The kinds of token.
const (
	KindChat    Kind = iota // get-chat-token, per channel, user, role and origin: the zero Kind
	KindChannel             // the old get-token, per channel
)

// Key names one cached token: a chat token is Key{ChannelID: ..., UserID:
// ..., Role: ..., Origin: ...}, with its fields named so that none can be
// swapped unseen. For KindChannel only ChannelID is used.
type Key struct {
	Kind      Kind
	ChannelID string
	UserID    string
	Role      string
	Origin    string
}

// ChannelKey returns the key of a channel's old token.
func ChannelKey(channelID string) Key { return Key{Kind: KindChannel, ChannelID: channelID} }

// keyVersion changes whenever the stored value or key layout changes
// incompatibly, so that old and new instances never read each other's keys.
const keyVersion = "v1"

// identity is an injective text form of k: each field is query-escaped, which
// always escapes ':', so joining the fields with ':' cannot be ambiguous.
func (k Key) identity() string { return string(k.appendIdentity(nil)) }

// appendIdentity appends k's identity to b; QueryEscape returns a field that
// needs no escaping as it is, so a plain key allocates nothing here.
func (k Key) appendIdentity(b []byte) []byte {
	if k.Kind == KindChannel {
		return append(append(b, "ch:"...), url.QueryEscape(k.ChannelID)...)
	}
	b = append(b, "chat:"...)
	for i, f := range [...]string{k.ChannelID, k.UserID, k.Role, k.Origin} {
		if i > 0 {
			b = append(b, ':')
		}
		b = append(b, url.QueryEscape(f)...)
	}
	return b
}

// redisKeys are the Redis keys of one token. They share a hash tag made from
// the whole identity, so a script can touch them all in Redis Cluster, while
// the tokens of one hot channel still spread over every slot. Only the value
// key is built up front: a hit needs no other.
type redisKeys struct {
	value string // base + "t:" + identity: the token or negative entry
	base  int    // len(base)
}

// lease is the key of whoever is fetching the token now.
func (r redisKeys) lease() string { return r.sibling("l:") }

// backoff is the key that holds the fleet back after failed refreshes.
func (r redisKeys) backoff() string { return r.sibling("b:") }

// waiters is set while another instance waits for the lease holder.
func (r redisKeys) waiters() string { return r.sibling("w:") }

// mark holds the Redis time (ms) of the identity's last DELETE, kept for
// longer than any value fetched before it lives.
func (r redisKeys) mark() string { return r.sibling("d:") }

// markOf is the delete mark's key of the identity whose value key is key.
func markOf(key string) string {
	return redisKeys{value: key, base: strings.Index(key, "}:t:") + 2}.mark()
}

// leaseKeys are the keys of the lease scripts: value, lease, waiters and
// the delete mark.
func (r redisKeys) leaseKeys() []string { return []string{r.value, r.lease(), r.waiters(), r.mark()} }

func (r redisKeys) sibling(kind string) string { return r.value[:r.base] + kind + r.value[r.base+2:] }

func (k Key) redisKeys(prefix string) redisKeys {
	var buf [128]byte // most identities fit: then the key is the only allocation
	return redisKeysOf(prefix, k.appendIdentity(buf[:0]))
}

// redisKeysOf names the keys of identity id, clear or hidden, built in one
// allocation.
func redisKeysOf(prefix string, id []byte) redisKeys {
	var tag [13]byte // a uint64 in base 36
	hash := strconv.AppendUint(tag[:0], xxhash.Sum64(id), 36)
	var b strings.Builder
	b.Grow(len(prefix) + len(keyVersion) + len(":{}:") + len(hash) + len("t:") + len(id))
	b.WriteString(prefix)
	b.WriteString(keyVersion)
	b.WriteString(":{")
	b.Write(hash)
	b.WriteString("}:")
	base := b.Len()
	b.WriteString("t:")
	b.Write(id)
	return redisKeys{value: b.String(), base: base}
}

// keysOf returns k's Redis keys; with encryption on, the identity in them is
// a keyed hash.
func (c *Cache) keysOf(k Key) redisKeys {
	n := c.names.Load()
	if n == nil {
		return k.redisKeys(c.opts.Prefix)
	}
	var buf [128]byte
	return redisKeysOf(c.opts.Prefix, n.Hide(k.appendIdentity(buf[:0])))
}

// channelRejectionKey is the key of a Polyv rejection of k's whole channel.
func (c *Cache) channelRejectionKey(k Key) string {
	return c.keysOf(ChannelKey(k.ChannelID)).sibling("n:")
}

// parseIdentity inverts identity; it exists to prove that encoding is injective.
func parseIdentity(s string) (Key, error) {
	kind, rest, _ := strings.Cut(s, ":")
	parts := strings.Split(rest, ":")
	unescaped := make([]string, len(parts))
	for i, p := range parts {
		u, err := url.QueryUnescape(p)
		if err != nil {
			return Key{}, err
		}
		unescaped[i] = u
	}
	switch {
	case kind == "ch" && len(parts) == 1:
		return ChannelKey(unescaped[0]), nil
	case kind == "chat" && len(parts) == 4:
		return Key{ChannelID: unescaped[0], UserID: unescaped[1], Role: unescaped[2], Origin: unescaped[3]}, nil
	}
	return Key{}, errors.New("cache: not a key identity")
}
