package cache

import (
	"context"
	"errors"
	"net"
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
	drop    func(key string, deleted bool)
	dropAll func()
	metrics *Metrics

	mu      sync.Mutex
	waiters map[string]map[chan struct{}]struct{}
}

func newEvents(self, channel string, drop func(string, bool), dropAll func(), m *Metrics) *events {
	return &events{self: self, channel: channel, drop: drop, dropAll: dropAll, metrics: m, waiters: map[string]map[chan struct{}]struct{}{}}
}

// How the listener finds a subscription that died without an error (its
// host left the network, say, while the other commands moved to a new
// master): having heard nothing for pingEvery, it pings over the
// subscription; having heard nothing, not even the pong, for silentAfter, it
// subscribes again on a new connection, and the new subscription drops the
// local cache. So 2 s after a Delete, no instance serves the deleted token.
const (
	pingEvery   = 400 * time.Millisecond
	silentAfter = 3 * pingEvery
)

// subscribeWait bounds the wait at start for the subscription to be in
// place.
const subscribeWait = 2 * time.Second

// start subscribes and dispatches messages until ctx ends. go-redis
// resubscribes by itself after a connection fails with an error; the
// listener replaces a connection that went silent.
func (ev *events) start(ctx context.Context, rdb Redis, bg *sync.WaitGroup) {
	ps := rdb.Subscribe(ctx, ev.channel)
	// Wait briefly for the subscription, so that messages sent right after
	// New returns are not missed; a dead Redis must not block start-up.
	rctx, cancel := context.WithTimeout(ctx, subscribeWait)
	_, _ = ps.Receive(rctx)
	cancel()
	bg.Add(1)
	go func() {
		defer bg.Done()
		for {
			stop := context.AfterFunc(ctx, func() { _ = ps.Close() }) // ends a read under way
			ev.listen(ctx, ps)
			stop()
			_ = ps.Close()
			if ctx.Err() != nil {
				return
			}
			ps = rdb.Subscribe(ctx, ev.channel)
		}
	}()
}

// listen dispatches ps's messages until ctx ends or ps goes silent.
func (ev *events) listen(ctx context.Context, ps *redis.PubSub) {
	heard := time.Now()
	failed := false // the last receive failed other than by timing out
	for {
		wait := min(pingEvery, silentAfter-time.Since(heard))
		if wait <= 0 {
			ev.metrics.pubsubSilent.Inc()
			return
		}
		msg, err := ps.ReceiveTimeout(ctx, wait)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				_ = ps.Ping(ctx) // the pong comes back as a message
				continue
			}
			if failed { // go-redis could not reconnect at once: do not spin
				select {
				case <-time.After(pingEvery / 4):
				case <-ctx.Done():
					return
				}
			}
			failed = true
			continue
		}
		heard, failed = time.Now(), false
		switch m := msg.(type) {
		case *redis.Message:
			ev.dispatch(m.Payload)
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				ev.metrics.localDropped.Inc()
				ev.dropAll()
				ev.wakeAll()
			}
		}
	}
}

// publish tells the fleet that key changed. Failure is tolerated: waiters
// also poll, and local entries never outlive their token.
func (ev *events) publish(ctx context.Context, rdb Redis, key string) {
	ev.notify(key)
	_ = rdb.Publish(ctx, ev.channel, ev.message(key)).Err()
}

// message is the payload that says key changed: "sender key".
func (ev *events) message(key string) string { return ev.self + " " + key }

// deletedMark follows the sender's id in the message of a Delete; instances
// of earlier releases read it as another sender's change, which it also is.
const deletedMark = "!del"

// deletedMessage is the payload that says key was deleted.
func (ev *events) deletedMessage(key string) string { return ev.self + deletedMark + " " + key }

func (ev *events) dispatch(payload string) {
	sender, key, ok := strings.Cut(payload, " ")
	if !ok {
		return
	}
	sender, deleted := strings.CutSuffix(sender, deletedMark)
	if sender != ev.self {
		ev.drop(key, deleted)
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
