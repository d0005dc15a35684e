package client

import (
	"container/list"
	"sync"
	"time"
)

// tokenCache keeps tokens until a deadline, bounded in entries, dropping
// the least recently used first. The standard library holds no such cache,
// and this package takes no dependencies beyond it.
type tokenCache struct {
	mu    sync.Mutex
	max   int
	order list.List // of *cached, most recent first
	byKey map[string]*list.Element
	// gens counts each key's deletes, so that a fetch begun before one
	// stores nothing; epoch moves instead once gens grows past max.
	gens  map[string]uint64
	epoch uint64
}

// generation is a key's count of deletes, as a fetch sees it when it begins.
type generation struct{ epoch, n uint64 }

type cached struct {
	key   string
	token ChatToken
	until time.Time
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, byKey: map[string]*list.Element{}, gens: map[string]uint64{}}
}

func (c *tokenCache) get(key string, now time.Time) (ChatToken, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.byKey[key]
	if !ok {
		return ChatToken{}, false
	}
	e := el.Value.(*cached)
	if !now.Before(e.until) {
		c.order.Remove(el)
		delete(c.byKey, key)
		return ChatToken{}, false
	}
	c.order.MoveToFront(el)
	return e.token, true
}

// gen returns key's generation, for putIf.
func (c *tokenCache) gen(key string) generation {
	c.mu.Lock()
	defer c.mu.Unlock()
	return generation{c.epoch, c.gens[key]}
}

// putIf keeps t for key until until, unless key was deleted since g.
func (c *tokenCache) putIf(key string, t ChatToken, until time.Time, g generation) {
	if !time.Now().Before(until) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if g != (generation{c.epoch, c.gens[key]}) {
		return
	}
	if el, ok := c.byKey[key]; ok {
		el.Value = &cached{key, t, until}
		c.order.MoveToFront(el)
		return
	}
	c.byKey[key] = c.order.PushFront(&cached{key, t, until})
	for c.order.Len() > c.max {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.byKey, oldest.Value.(*cached).key)
	}
}

// remove drops key's token and moves its generation on, so that no fetch
// begun before stores one.
func (c *tokenCache) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gens[key]++
	if len(c.gens) > c.max {
		c.gens = map[string]uint64{}
		c.epoch++
	}
	if el, ok := c.byKey[key]; ok {
		c.order.Remove(el)
		delete(c.byKey, key)
	}
}
