package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/seal"
)

// With encryption on, key names hide identities behind an HMAC keyed by the
// fleet's name key: a secret made once, by the first instance, and
// kept in Redis sealed under each configured encryption key (a hash of key id
// to sealed secret). An instance opens it with any of its keys and adds a
// copy under each of its keys the hash lacks. So names never change when the
// encryption keys do: a rotation rolled one instance at a time renames
// nothing, and a Delete on any instance reaches the name every other reads.

// namer hides identities in key names under one name key.
type namer struct {
	*seal.Namer
	secret []byte
	// fleet is false for a stand-in used until Redis gives the fleet's
	// name key: nothing is read from or written to Redis under it.
	fleet bool
}

func newNamer(secret []byte, fleet bool) *namer {
	return &namer{Namer: seal.NewNamer(secret), secret: secret, fleet: fleet}
}

// nameKeyScript stores ARGV (key id, sealed secret, ...) as the name key
// unless one exists, and returns the name key's copies.
var nameKeyScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('HSET', KEYS[1], unpack(ARGV)) end
return redis.call('HGETALL', KEYS[1])`)

// NameKeyError says that no configured encryption key opens the fleet's
// name key: this instance would name every token differently from the rest
// of the fleet, so it must not use Redis.
type NameKeyError struct {
	Key      string   // the Redis key of the name key
	Ours     []string // the configured key ids
	InRedis  []string // the ids the name key is sealed under
	Mismatch []string // ids both have, whose keys differ
}

func (e *NameKeyError) Error() string {
	return fmt.Sprintf("cache: none of the encryption keys (%s) opens the fleet's name key in Redis (sealed under %s%s): "+
		"configure a key the fleet uses, or delete the Redis key %s to start afresh (every cached token is then fetched again)",
		strings.Join(e.Ours, ", "), strings.Join(e.InRedis, ", "), mismatchNote(e.Mismatch), e.Key)
}

func mismatchNote(ids []string) string {
	if len(ids) == 0 {
		return ""
	}
	return "; " + strings.Join(ids, ", ") + " differ from the fleet's keys of the same id"
}

func (c *Cache) nameKeyKey() string { return c.opts.Prefix + keyVersion + ":names" }

// loadNames reads the fleet's name key, making it if there is none, adds
// the copies this instance's keys lack, and puts it in use. It returns
// *NameKeyError when no configured key opens it.
func (c *Cache) loadNames(ctx context.Context) error {
	key := c.nameKeyKey()
	fresh := c.sealer.DerivedSecret()
	var args []any
	for _, id := range c.sealer.IDs() {
		args = append(args, id, c.sealer.SealWith(id, key, fresh))
	}
	reply, err := nameKeyScript.Run(ctx, c.rdb, []string{key}, args...).StringSlice()
	if err != nil {
		return redisFailure(err)
	}
	var secret []byte
	var inRedis, mismatch []string
	for i := 0; i+1 < len(reply); i += 2 {
		id := reply[i]
		inRedis = append(inRedis, id)
		if !slices.Contains(c.sealer.IDs(), id) {
			continue
		}
		plain, _, err := c.sealer.OpenBy(key, []byte(reply[i+1]))
		if err != nil || (secret != nil && !bytes.Equal(plain, secret)) {
			mismatch = append(mismatch, id)
			continue
		}
		secret = plain
	}
	if secret == nil {
		return &NameKeyError{Key: key, Ours: c.sealer.IDs(), InRedis: inRedis, Mismatch: mismatch}
	}
	for _, id := range mismatch {
		c.metrics.unopenable.Inc()
		c.warnOnce("mismatch "+id, fmt.Sprintf("encryption key %q differs from the fleet's key of that id: values it sealed elsewhere do not open here and are fetched again; give every instance the same keys", id))
	}
	pipe := c.rdb.Pipeline()
	for _, id := range c.sealer.IDs() {
		if !slices.Contains(inRedis, id) {
			pipe.HSetNX(ctx, key, id, c.sealer.SealWith(id, key, secret))
		}
	}
	if pipe.Len() > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return redisFailure(err)
		}
	}
	if old := c.names.Load(); old == nil || !old.fleet || !bytes.Equal(old.secret, secret) {
		c.names.Store(newNamer(secret, true))
		if old != nil {
			c.dropAllLocal() // held under other names
		}
	}
	return nil
}

// How often the name key is checked: it may have been lost with Redis's
// data (an instance then stores its own again), or be unknown yet.
const (
	namesCheckEvery  = 10 * time.Second
	namesRetryEvery  = time.Second
	namesCallTimeout = 2 * time.Second
)

// startNames puts the fleet's name key in use, or, when Redis cannot be
// reached, a stand-in under which the cache runs on local state alone until
// it can. It fails only when no configured key opens the name key.
func (c *Cache) startNames() error {
	ctx, cancel := context.WithTimeout(c.life, namesCallTimeout)
	err := c.loadNames(ctx)
	cancel()
	var keyErr *NameKeyError
	if errors.As(err, &keyErr) {
		return err
	}
	if err != nil {
		stand := make([]byte, 32)
		_, _ = rand.Read(stand)
		c.names.Store(newNamer(stand, false))
		c.log.Warn("Redis cannot be reached to read the fleet's name key: serving from the local cache and Polyv until it can", "error", err)
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		c.keepNames()
	}()
	return nil
}

// keepNames checks the name key now and then, until Close.
func (c *Cache) keepNames() {
	lastErr := ""
	for {
		wait := namesCheckEvery
		if !c.names.Load().fleet {
			wait = namesRetryEvery
		}
		select {
		case <-c.life.Done():
			return
		case <-time.After(wait):
		}
		ctx, cancel := context.WithTimeout(c.life, namesCallTimeout)
		wasFleet := c.names.Load().fleet
		err := c.loadNames(ctx)
		cancel()
		switch {
		case err != nil && c.life.Err() == nil && err.Error() != lastErr:
			lastErr = err.Error()
			c.log.Warn("cannot check the fleet's name key", "error", err)
		case err == nil && !wasFleet:
			lastErr = ""
			c.log.Info("the fleet's name key is read: using Redis again")
			c.startReseal()
		}
	}
}

// warnOnce logs msg the first time it is seen under topic.
func (c *Cache) warnOnce(topic, msg string) {
	if _, seen := c.warned.LoadOrStore(topic, true); !seen {
		c.log.Warn(msg)
	}
}
