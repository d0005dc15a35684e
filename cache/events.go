package cache

import (
	"context"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// events carries "this key changed" across the fleet on one pub/sub channel.
// A message drops the key from every other instance's local cache and wakes
// every local waiter for the key. Messages sent while the subscription was
// down are lost, so each new subscription drops the whole local cache and
// wakes every waiter to check again.
type events struct {
	self    string
	channel string
	drop    func(key string)
	dropAll func()

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

func newEvents(self, channel string, drop func(string), dropAll func()) *events {
	return &events{self: self, channel: channel, drop: drop, dropAll: dropAll, waiters: map[string]map[chan struct{}]struct{}{}}
}

// start subscribes and dispatches messages until ctx ends. go-redis
// resubscribes by itself after a connection drops, and says so with a
// *redis.Subscription; a health-check ping every second finds a dead
// connection that sent no error.
func (ev *events) start(ctx context.Context, rdb rediser, bg *sync.WaitGroup) {
	ps := rdb.Subscribe(ctx, ev.channel)
	// Wait briefly for the subscription, so that messages sent right after
	// New returns are not missed; a dead Redis must not block start-up.
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, _ = ps.Receive(rctx)
	cancel()
	msgs := ps.ChannelWithSubscriptions(redis.WithChannelHealthCheckInterval(time.Second))
	bg.Add(1)
	go func() {
		defer bg.Done()
		defer ps.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case m, ok := <-msgs:
				if !ok {
					return
				}
				switch m := m.(type) {
				case *redis.Message:
					ev.dispatch(m.Payload)
				case *redis.Subscription:
					if m.Kind == "subscribe" {
						ev.dropAll()
						ev.wakeAll()
					}
				}
			}
		}
	}()
}

// publish tells the fleet that key changed. Failure is tolerated: waiters
// also poll, and local entries never outlive their token.
func (ev *events) publish(ctx context.Context, rdb rediser, key string) {
	ev.notify(key)
	_ = rdb.Publish(ctx, ev.channel, ev.message(key)).Err()
}

// message is the payload that says key changed.
func (ev *events) message(key string) string { return ev.self + " " + key }

func (ev *events) dispatch(payload string) {
	sender, key, ok := strings.Cut(payload, " ")
	if !ok {
		return
	}
	if sender != ev.self {
		ev.drop(key)
	}
	ev.notify(key)
}

func (ev *events) notify(key string) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	wakeEach(ev.waiters[key])
}

// wakeAll wakes every waiter, whatever its key.
func (ev *events) wakeAll() {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	for _, chans := range ev.waiters {
		wakeEach(chans)
	}
}

// wakeEach wakes each waiter of chans that has no wake-up pending.
func wakeEach(chans map[chan struct{}]struct{}) {
	for ch := range chans {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// wait registers for key's changes; call unregister when done.
func (ev *events) wait(key string) (wake <-chan struct{}, unregister func()) {
	ch := make(chan struct{}, 1)
	ev.mu.Lock()
	if ev.waiters[key] == nil {
		ev.waiters[key] = map[chan struct{}]struct{}{}
	}
	ev.waiters[key][ch] = struct{}{}
	ev.mu.Unlock()
	return ch, func() {
		ev.mu.Lock()
		delete(ev.waiters[key], ch)
		if len(ev.waiters[key]) == 0 {
			delete(ev.waiters, key)
		}
		ev.mu.Unlock()
	}
}
