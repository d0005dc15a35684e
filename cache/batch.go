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
	rdb     Redis
	timeout time.Duration // bounds one batch; each caller also leaves on its own ctx

	mu      sync.Mutex
	pending []*getCall
	running bool
}

type getCall struct {
	key  string
	val  []byte
	mark int64 // the identity's delete mark (see redisKeys.mark)
	err  error
	done chan struct{}
}

// get returns key's value and its identity's delete mark, or redis.Nil.
func (b *getBatcher) get(ctx context.Context, key string) ([]byte, int64, error) {
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
		return call.val, call.mark, call.err
	case <-ctx.Done():
		return nil, 0, ctx.Err()
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
	cmds := make([]*redis.SliceCmd, len(batch))
	for i, call := range batch {
		cmds[i] = pipe.MGet(ctx, call.key, markOf(call.key)) // one slot: one node
	}
	_, err := pipe.Exec(ctx)
	for i, call := range batch {
		vals, cmdErr := cmds[i].Result()
		switch {
		case cmdErr != nil:
			call.err = cmdErr
		case len(vals) != 2 && err != nil:
			call.err = err // not sent: the circuit is open
		case len(vals) != 2 || vals[0] == nil:
			call.err = redis.Nil
		default:
			v, _ := vals[0].(string)
			call.val = []byte(v)
			call.mark = markIn(vals, 1)
		}
		close(call.done)
	}
}
