package cache

import (
	"strings"
	"testing"

	"github.com/tokencache/tokencache/internal/seal"
)

func TestKeyEncoding(t *testing.T) {
	tests := []struct {
		a, b Key
	}{
		{Key{ChannelID: "1", UserID: "a:b", Role: "viewer"}, Key{ChannelID: "1:a", UserID: "b", Role: "viewer"}},
		{Key{ChannelID: "1", UserID: "u", Role: "viewer"}, Key{ChannelID: "1", UserID: "u", Role: "viewer", Origin: " "}},
		{Key{ChannelID: "1", UserID: "{x}", Role: "viewer", Origin: "web"}, Key{ChannelID: "1", UserID: "%7Bx%7D", Role: "viewer", Origin: "web"}},
		{Key{ChannelID: "1", UserID: "a b", Role: "viewer"}, Key{ChannelID: "1", UserID: "a+b", Role: "viewer"}},
		{Key{ChannelID: "1", UserID: "a|b", Role: "guest"}, Key{ChannelID: "1", UserID: "a", Role: "guest", Origin: "b"}},
		{ChannelKey("1"), Key{ChannelID: "1"}},
	}
	for _, tt := range tests {
		ka, kb := tt.a.redisKeys("tc:"), tt.b.redisKeys("tc:")
		if ka.value == kb.value {
			t.Errorf("%+v and %+v share the key %q", tt.a, tt.b, ka.value)
		}
	}
}

func TestKeyLayout(t *testing.T) {
	k := Key{ChannelID: "2094979", UserID: "用户{1}", Role: "viewer", Origin: "web"}.redisKeys("tc:")
	if !strings.HasPrefix(k.value, "tc:v1:{") || !strings.HasPrefix(k.lease(), "tc:v1:{") {
		t.Errorf("keys %q, %q are not versioned under the prefix", k.value, k.lease())
	}
	if tag(k.value) != tag(k.lease()) {
		t.Errorf("value and lease hash tags differ: %q vs %q", k.value, k.lease())
	}
	// Only the first {...} is the hash tag, so userId braces must not form one.
	if strings.Count(k.value, "{") != 1 {
		t.Errorf("key %q holds more than one '{'", k.value)
	}
	other := Key{ChannelID: "2094979", UserID: "someone-else", Role: "viewer", Origin: "web"}.redisKeys("tc:")
	if tag(k.value) == tag(other.value) {
		t.Error("two users of one channel share a hash tag: a hot channel would pin one slot")
	}
}

// tag returns the Redis Cluster hash tag of a key.
func tag(key string) string {
	i := strings.IndexByte(key, '{')
	j := strings.IndexByte(key[i:], '}')
	return key[i+1 : i+j]
}

func FuzzKeyInjective(f *testing.F) {
	f.Add("2094979", "1b448be323", "viewer", "web", "2094979", "1b448be323", "viewer", "")
	f.Add("1", "a:b", "viewer", "", "1:a", "b", "viewer", "")
	f.Add("1", "%3A", "x", "", "1", ":", "x", "")
	f.Fuzz(func(t *testing.T, c1, u1, r1, o1, c2, u2, r2, o2 string) {
		a, b := Key{ChannelID: c1, UserID: u1, Role: r1, Origin: o1}, Key{ChannelID: c2, UserID: u2, Role: r2, Origin: o2}
		for _, k := range []Key{a, b, ChannelKey(c1)} {
			back, err := parseIdentity(k.identity())
			if err != nil || back != k {
				t.Fatalf("parseIdentity(identity(%+v)) = %+v, %v", k, back, err)
			}
		}
		if a != b && a.redisKeys("tc:").value == b.redisKeys("tc:").value {
			t.Fatalf("%+v and %+v share a key", a, b)
		}
	})
}

func TestLeaseKey(t *testing.T) {
	k := Key{ChannelID: "1", UserID: "t:l:", Role: "viewer"}.redisKeys("tc:")
	if want := strings.Replace(k.value, "}:t:", "}:l:", 1); k.lease() != want {
		t.Errorf("lease() = %q, want %q", k.lease(), want)
	}
}

// The key names are shared with the instances of earlier releases during a
// rolling update, so their bytes must not change unless keyVersion does.
func TestKeyNamesStable(t *testing.T) {
	c := newSealedCacheForKeys(t)
	for _, tt := range []struct {
		k          Key
		clear, hid string
	}{
		{Key{ChannelID: "2094979", UserID: "1b448be323", Role: "viewer", Origin: "web"},
			"tc:v1:{1mcveb007rkm4}:t:chat:2094979:1b448be323:viewer:web",
			"tc:v1:{gqanqt038xfp}:t:oIvj_AYESbVA9lSn84vjwUl1RKxJilxIOwc1jlSC-qU"},
		{Key{ChannelID: "1", UserID: "用户 {1}:x", Role: "guest"},
			"tc:v1:{3cyifcyj56eaz}:t:chat:1:%E7%94%A8%E6%88%B7+%7B1%7D%3Ax:guest:",
			"tc:v1:{4p0ej8ojvzps}:t:qSRSmZnzY2W0Mf0PqHDUES8Sfj3KDLzq4LA3AZ_J49Q"},
		{ChannelKey("2094979"),
			"tc:v1:{2a80tjzs7ftdx}:t:ch:2094979",
			"tc:v1:{dbd8uv5tl0at}:t:7uHtZEsJEzZ7r6rJz2LcCfOccJrY_plXSrOTpT-XdLo"},
	} {
		if got := tt.k.redisKeys("tc:").value; got != tt.clear {
			t.Errorf("%+v: key %q, want %q", tt.k, got, tt.clear)
		}
		if got := c.keysOf(tt.k).value; got != tt.hid {
			t.Errorf("%+v: hidden key %q, want %q", tt.k, got, tt.hid)
		}
	}
}

func newSealedCacheForKeys(t *testing.T) *Cache {
	t.Helper()
	s, err := seal.New([]EncryptionKey{encKey("k1", 1)})
	if err != nil {
		t.Fatal(err)
	}
	c := &Cache{sealer: s, opts: Options{Prefix: "tc:"}}
	c.names.Store(newNamer(s.DerivedSecret(), true))
	return c
}
