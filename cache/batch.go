package cache

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// getBatcher merges concurrent GETs into pipelines, as rueidis's automatic
// pipelining does: while one batch is in flight, new GETs wait together and
// go out as the next batch, one round trip for all of them. Under little load
// a batch is a single GET sent at once. go-redis v9.23's AutoPipeliner does
// the same, but it is marked experimental and holds goroutines of its own.
type getBatcher struct {
	rdb     rediser
	timeout time.Duration // bounds one batch; each caller also leaves on its own ctx

	mu      sync.Mutex
	pending []*getCall
	running bool
}

type getCall struct {
	key  string
	val  []byte
	err  error
	done chan struct{}
}

// get returns key's value, or redis.Nil.
func (b *getBatcher) get(ctx context.Context, key string) ([]byte, error) {
	call := &getCall{key: key, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, call)
	start := !b.running
	b.running = true
	b.mu.Unlock()
	if start {
		go b.run()
	}
	select {
	case <-call.done:
		return call.val, call.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// run sends batches until none is pending.
func (b *getBatcher) run() {
	for {
		b.mu.Lock()
		batch := b.pending
		b.pending = nil
		if len(batch) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		b.send(batch)
	}
}

func (b *getBatcher) send(batch []*getCall) {
	ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
	defer cancel()
	pipe := b.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(batch))
	for i, call := range batch {
		cmds[i] = pipe.Get(ctx, call.key)
	}
	_, err := pipe.Exec(ctx)
	for i, call := range batch {
		call.val, call.err = cmds[i].Bytes()
		if call.err == nil && call.val == nil && err != nil {
			call.err = err // not sent: the circuit is open
		}
		close(call.done)
	}
}
