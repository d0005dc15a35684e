package cache

import (
	"sync/atomic"

	"github.com/cespare/xxhash/v2"
)

// generations count the invalidations of local entries, striped by key, so
// that a write to the local cache can tell whether its key was invalidated
// after the value was read: a Redis read that raced a Delete must not put
// the deleted token back. Stripes share counts, so an unrelated delete can
// only cost a local write, never let a stale one through.
type generations struct {
	stripes [256]atomic.Uint64
	all     atomic.Uint64 // bumped when the whole local cache is dropped
}

func (g *generations) of(key string) uint64 {
	return g.all.Load() + g.stripes[xxhash.Sum64String(key)%uint64(len(g.stripes))].Load()
}

func (g *generations) bump(key string) {
	g.stripes[xxhash.Sum64String(key)%uint64(len(g.stripes))].Add(1)
}

func (c *Cache) localGet(key string) (entry, bool) {
	if c.local == nil {
		return entry{}, false
	}
	e, ok := c.local.GetIfPresent(key)
	if !ok {
		return entry{}, false
	}
	if !c.opts.Now().Before(e.Until) {
		c.local.Invalidate(key)
		return entry{}, false
	}
	return e, true
}

// localGen is key's invalidation generation: take it before reading the
// value that localSetIf will write.
func (c *Cache) localGen(key string) uint64 { return c.localGens.of(key) }

// localSetIf writes e unless key was invalidated since gen. It writes first
// and checks after, so that an invalidation racing it either is seen by the
// check or removes the entry itself.
func (c *Cache) localSetIf(key string, e entry, gen uint64) {
	if c.local == nil {
		return
	}
	c.local.Set(key, e)
	if c.localGens.of(key) != gen {
		c.local.Invalidate(key)
	}
}

// dropLocal invalidates key: bump first, then remove, the mirror of localSetIf.
func (c *Cache) dropLocal(key string) {
	c.localGens.bump(key)
	if c.local != nil {
		c.local.Invalidate(key)
	}
}

// dropAllLocal invalidates every local entry, for when invalidations may
// have been missed.
func (c *Cache) dropAllLocal() {
	c.localGens.all.Add(1)
	if c.local != nil {
		c.local.InvalidateAll()
	}
}
