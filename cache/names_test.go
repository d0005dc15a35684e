package cache

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/syncbuf"
)

// logBuffer collects a Cache's log lines.
type logBuffer = syncbuf.Buffer

func loggingTo(buf *logBuffer, keys ...EncryptionKey) func(*Options) {
	return func(o *Options) {
		o.EncryptionKeys = keys
		o.Logger = slog.New(slog.NewTextHandler(buf, nil))
	}
}

// A key that opens nothing in Redis is reported at start, not found out
// token by token: values sealed under a key this instance lacks are counted
// and named in a WARN, and an instance none of whose keys opens the fleet's
// name key refuses to start rather than name everything differently.
func TestWrongEncryptionKeyFoundAtStart(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	k9, k1 := encKey("k9", 9), encKey("k1", 1)
	a := newCache(t, ownClient(t, rdb), up, testOptions(func(o *Options) { o.EncryptionKeys = []EncryptionKey{k9, k1} }))
	for _, u := range []string{"u1", "u2", "u3"} {
		if _, _, err := a.Get(context.Background(), Key{ChannelID: "1", UserID: u, Role: "viewer"}); err != nil {
			t.Fatal(err)
		}
	}
	settle(a)

	t.Run("a value sealed under a key not configured", func(t *testing.T) {
		var log logBuffer
		b := newCache(t, ownClient(t, rdb), up, testOptions(loggingTo(&log, k1)))
		waitResealed(t, b)
		if got := testutil.ToFloat64(b.metrics.unopenable); got != 3 {
			t.Errorf("undecryptable values counted at start = %v, want 3", got)
		}
		if !strings.Contains(log.String(), "level=WARN") || !strings.Contains(log.String(), "sealedUnder=k9") {
			t.Errorf("no WARN naming the missing key k9:\n%s", log.String())
		}
	})
	t.Run("a wrong key under the fleet's id", func(t *testing.T) {
		var log logBuffer
		b := newCache(t, ownClient(t, rdb), up, testOptions(loggingTo(&log, k9, encKey("k1", 7))))
		waitResealed(t, b)
		if !strings.Contains(log.String(), `differs from the fleet's key`) || !strings.Contains(log.String(), `\"k1\"`) {
			t.Errorf("no WARN for the wrong k1:\n%s", log.String())
		}
	})
	t.Run("no key opens the name key", func(t *testing.T) {
		_, err := New(ownClient(t, rdb), up, testOptions(func(o *Options) { o.EncryptionKeys = []EncryptionKey{encKey("k2", 2), encKey("k1", 7)} }))
		var keyErr *NameKeyError
		if !errors.As(err, &keyErr) || !strings.Contains(err.Error(), "k1 differ") {
			t.Fatalf("New() = %v, want a NameKeyError naming k1", err)
		}
	})
	t.Run("one key under two ids", func(t *testing.T) {
		var log logBuffer
		newCache(t, ownClient(t, rdb), up, testOptions(loggingTo(&log, k1, EncryptionKey{ID: "k1copy", Key: k1.Key})))
		if !strings.Contains(log.String(), "same key as k1") {
			t.Errorf("no WARN for the key given twice:\n%s", log.String())
		}
	})
}

// Started while Redis is down, an encrypted instance serves from Polyv and
// its local cache, refuses Deletes it could not make hold, and takes up the
// fleet's names once Redis answers.
func TestEncryptedStartWithoutRedis(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	mr.Close()
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(func(o *Options) { o.EncryptionKeys = []EncryptionKey{encKey("k1", 1)} }))
	if _, _, err := c.Get(context.Background(), viewerKey); err != nil {
		t.Fatalf("Get() without Redis = %v", err)
	}
	if err := c.Delete(context.Background(), viewerKey); !errors.Is(err, ErrRedisUnavailable) {
		t.Fatalf("Delete() without the name key = %v, want ErrRedisUnavailable", err)
	}
	if err := mr.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the name key read", func() bool { return c.redisUsable() })
	if _, err := mr.Get(c.nameKeyKey()); err != nil && !mr.Exists(c.nameKeyKey()) {
		t.Error("the name key was not stored")
	}
	if err := c.Delete(context.Background(), viewerKey); err != nil {
		t.Errorf("Delete() once Redis answers = %v", err)
	}
}

// Turning encryption on one instance at a time: a Delete on either kind of
// instance reaches the name the other reads.
func TestDeletesHoldWhileEncryptionIsTurnedOn(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	ctx := context.Background()
	clear := newCache(t, ownClient(t, rdb), up, testOptions(nil))
	sealed := newCache(t, ownClient(t, rdb), up, testOptions(func(o *Options) { o.EncryptionKeys = []EncryptionKey{encKey("k1", 1)} }))
	get := func(c *Cache) string {
		t.Helper()
		tok, _, err := c.Get(ctx, viewerKey)
		if err != nil {
			t.Fatal(err)
		}
		return tok.Token
	}
	for _, step := range []struct {
		name      string
		by, other *Cache
	}{{"delete without encryption", clear, sealed}, {"delete with encryption", sealed, clear}} {
		old := get(step.other)
		settle(step.other)
		if err := step.by.Delete(ctx, viewerKey); err != nil {
			t.Fatal(err)
		}
		eventually(t, step.name+": the other instance drops the token", func() bool { return get(step.other) != old })
	}
}
