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
func (k Key) identity() string {
	if k.Kind == KindChannel {
		return "ch:" + url.QueryEscape(k.ChannelID)
	}
	return "chat:" + url.QueryEscape(k.ChannelID) + ":" + url.QueryEscape(k.UserID) + ":" +
		url.QueryEscape(k.Role) + ":" + url.QueryEscape(k.Origin)
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

// leaseKeys are the keys of the lease scripts: value, lease, waiters.
func (r redisKeys) leaseKeys() []string { return []string{r.value, r.lease(), r.waiters()} }

func (r redisKeys) sibling(kind string) string { return r.value[:r.base] + kind + r.value[r.base+2:] }

func (k Key) redisKeys(prefix string) redisKeys { return k.redisKeysOf(prefix, k.identity()) }

// redisKeysOf names the keys of identity id, clear or hidden.
func (k Key) redisKeysOf(prefix, id string) redisKeys {
	base := prefix + keyVersion + ":{" + strconv.FormatUint(xxhash.Sum64String(id), 36) + "}:"
	return redisKeys{value: base + "t:" + id, base: len(base)}
}

// keysOf returns k's Redis keys; with encryption on, the identity in them is
// a keyed hash.
func (c *Cache) keysOf(k Key) redisKeys {
	if c.sealer == nil {
		return k.redisKeys(c.opts.Prefix)
	}
	return k.redisKeysOf(c.opts.Prefix, c.sealer.identity(k.identity()))
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
