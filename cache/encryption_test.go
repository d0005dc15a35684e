package cache

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/polyv"
)

func encKey(id string, b byte) EncryptionKey {
	return EncryptionKey{ID: id, Key: bytes.Repeat([]byte{b}, 32)}
}

// dump returns every key and value in Redis, as one string.
func dump(t *testing.T, rdb redis.UniversalClient) string {
	t.Helper()
	ctx := context.Background()
	var b bytes.Buffer
	for _, k := range rdb.Keys(ctx, "*").Val() {
		b.WriteString(k + "=" + rdb.Get(ctx, k).Val() + "\n")
	}
	return b.String()
}

func TestNothingInClearWithEncryption(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(func(o *Options) { o.EncryptionKeys = []EncryptionKey{encKey("k1", 1)} }))
	ctx := context.Background()
	tok, _, err := c.Get(ctx, viewerKey)
	if err != nil {
		t.Fatal(err)
	}
	up.setErr(&polyv.APIError{Endpoint: polyv.EndpointChatToken, Code: 403, Message: "illegal channel id: 666"})
	_, _, _ = c.Get(ctx, Key{ChannelID: "666", UserID: "rejected-user", Role: "viewer"})
	settle(c)

	all := dump(t, rdb)
	for _, clear := range []string{tok.Token, tok.MediaChannelKey, viewerKey.UserID, "rejected-user", "illegal channel"} {
		if bytes.Contains([]byte(all), []byte(clear)) {
			t.Errorf("Redis holds %q in clear:\n%s", clear, all)
		}
	}
	// And the cache still serves what it sealed.
	c.dropAllLocal()
	if again, res, err := c.Get(ctx, viewerKey); err != nil || again.Token != tok.Token || res != ResultHitRedis {
		t.Errorf("Get() of a sealed value = %q, %v, %v", again.Token, res, err)
	}
}

func TestSealedValueOpensOnlyUnderItsKey(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	up := &fakeUpstream{}
	c := newCache(t, rdb, up, testOptions(func(o *Options) { o.EncryptionKeys = []EncryptionKey{encKey("k1", 1)}; o.LocalSize = 0 }))
	ctx := context.Background()
	other := Key{ChannelID: "2094979", UserID: "another-user", Role: "viewer", Origin: "web"}
	if _, _, err := c.Get(ctx, viewerKey); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Get(ctx, other); err != nil {
		t.Fatal(err)
	}
	settle(c)
	// Move viewerKey's value over other's: it must not open there.
	moved := rdb.Get(ctx, c.keysOf(viewerKey).value).Val()
	rdb.Set(ctx, c.keysOf(other).value, moved, 0)
	tok, res, err := c.Get(ctx, other)
	if err != nil || res != ResultMiss || tok.Token == "" {
		t.Errorf("Get() over a moved value = %q, %v, %v; want a miss", tok.Token, res, err)
	}
	if got := testutil.ToFloat64(c.metrics.unopenable); got < 1 {
		t.Errorf("undecryptable values = %v, want it counted", got)
	}
	settle(c)
	if _, ok := c.decode(c.keysOf(other).value, []byte(rdb.Get(ctx, c.keysOf(other).value).Val())); !ok {
		t.Error("the value was not overwritten")
	}
}

// Rotation without downtime, across two instances on one Redis: add the new
// key second, then make it first, then drop the old one, one instance at a
// time, with deletes through either instance at every half-step. It fetches
// nothing but what the deletes drop, and no deleted token is served, even
// the tokens nobody reads until the old key is gone.
func TestKeyRotationAcrossInstances(t *testing.T) {
	rdb := realRedis(t)
	up := &fakeUpstream{}
	k1, k2 := encKey("k1", 1), encKey("k2", 2)
	instance := func(keys ...EncryptionKey) *Cache {
		c := newCache(t, ownClient(t, rdb), up, testOptions(func(o *Options) { o.EncryptionKeys = keys }))
		waitResealed(t, c)
		return c
	}
	ctx := context.Background()
	get := func(step string, c *Cache, k Key) string {
		t.Helper()
		tok, _, err := c.Get(ctx, k)
		if err != nil {
			t.Fatalf("%s: Get() = %v", step, err)
		}
		return tok.Token
	}
	users := make([]Key, 8)
	for i := range users {
		users[i] = Key{ChannelID: "2094979", UserID: fmt.Sprintf("u%d", i), Role: "viewer"}
	}
	a, b := instance(k1), instance(k1)
	for _, k := range users {
		if get("start", a, k) != get("start", b, k) {
			t.Fatal("start: instances disagree")
		}
	}
	settle(a)
	deletes := 0
	// deleteThrough deletes users[i] through one instance and checks that
	// the other stops serving it.
	deleteThrough := func(step string, by, other *Cache, i int) {
		t.Helper()
		old := get(step, other, users[i])
		if err := by.Delete(ctx, users[i]); err != nil {
			t.Fatalf("%s: Delete() = %v", step, err)
		}
		deletes++
		eventually(t, step+": the other instance drops the deleted token", func() bool { return get(step, other, users[i]) != old })
		settle(other)
	}
	for i, step := range []struct {
		name string
		keys []EncryptionKey
	}{
		{"new key added second", []EncryptionKey{k1, k2}},
		{"new key first", []EncryptionKey{k2, k1}},
		{"old key dropped", []EncryptionKey{k2}},
	} {
		a = instance(step.keys...) // restarted, one at a time
		deleteThrough(step.name+", a restarted, delete on a", a, b, 0)
		deleteThrough(step.name+", a restarted, delete on b", b, a, 1)
		for _, k := range users[:4] {
			_, _ = get(step.name, a, k), get(step.name, b, k)
		}
		b = instance(step.keys...)
		deleteThrough(step.name+", delete on b", b, a, 2)
		for j, k := range users[:4] {
			if x, y := get(step.name, a, k), get(step.name, b, k); x != y {
				t.Errorf("step %d (%s): instances serve %q and %q for user %d", i, step.name, x, y, j)
			}
		}
	}
	for _, k := range users { // users[4:] were last read under the old key alone
		_, _ = get("end", a, k), get("end", b, k)
	}
	if got, want := up.calls.Load(), int64(len(users)+deletes); got != want {
		t.Errorf("Polyv calls over the rotation = %d, want %d (one per token, one per delete): %d extra", got, want, got-want)
	}
}

func TestEncryptionKeyProblems(t *testing.T) {
	for _, keys := range [][]EncryptionKey{
		{{ID: "k", Key: []byte("short")}},
		{encKey("", 1)},
		{encKey("a:b", 1)},
		{encKey("k", 1), encKey("k", 2)},
	} {
		if _, err := New(nil, &fakeUpstream{}, Options{EncryptionKeys: keys}); err == nil {
			t.Errorf("New() accepted keys %v", keys)
		}
	}
}
