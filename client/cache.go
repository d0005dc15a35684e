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
}

type cached struct {
	key   string
	token ChatToken
	until time.Time
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, byKey: map[string]*list.Element{}}
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

func (c *tokenCache) put(key string, t ChatToken, until time.Time) {
	if !time.Now().Before(until) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
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

func (c *tokenCache) remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.byKey[key]; ok {
		c.order.Remove(el)
		delete(c.byKey, key)
	}
}
