package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"
)

// errAbandoned ends a fill whose callers all left before it called Polyv.
var errAbandoned = errors.New("cache: every caller left")

// errFillDone ends a fill's context once the fill has returned.
var errFillDone = errors.New("cache: fill done")

// flights are this process's shared fills and who waits on each, so that a
// fill knows the latest of its callers' deadlines and stops queueing when
// the last of them leaves.
type flights struct {
	mu sync.Mutex
	m  map[string]*flight // by value key
}

// flight is one shared fill.
type flight struct {
	ctx    context.Context // ends with errAbandoned when every caller has left
	cancel context.CancelCauseFunc
	queued atomic.Bool // waits for a Polyv slot now

	callers  int
	deadline time.Time // the latest of the callers' deadlines
	open     bool      // a caller without a deadline waits
}

type flightKey struct{}

// flightOf returns the flight whose fill runs under ctx, or nil.
func flightOf(ctx context.Context) *flight {
	f, _ := ctx.Value(flightKey{}).(*flight)
	return f
}

// join adds ctx's caller to the shared fill of keys, starting one if none
// runs. *leader is true, once ch delivers, if this caller's call ran it.
func (fs *flights) join(ctx context.Context, c *Cache, k Key, keys redisKeys) (f *flight, ch <-chan singleflight.Result, leader *bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f = fs.m[keys.value]
	if f == nil || f.ctx.Err() != nil {
		f = &flight{}
		fctx, cancel := context.WithCancelCause(context.WithoutCancel(ctx))
		f.ctx, f.cancel = context.WithValue(fctx, flightKey{}, f), cancel
		fs.m[keys.value] = f
	}
	f.callers++
	if d, ok := ctx.Deadline(); !ok {
		f.open = true
	} else if d.After(f.deadline) {
		f.deadline = d
	}
	leader = new(bool)
	ch = c.group.DoChan(keys.value, func() (v any, err error) {
		*leader = true
		untrack, ok := c.track()
		if !ok {
			fs.done(keys.value, f)
			return nil, errClosed
		}
		stop := context.AfterFunc(c.life, func() { f.cancel(errClosed) })
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("cache: fill panicked: %v", p)
			}
			stop()
			fs.done(keys.value, f)
			untrack()
		}()
		v, err = c.fill(f.ctx, k, keys)
		if err != nil && context.Cause(f.ctx) == errAbandoned {
			err = errAbandoned
		}
		if c.afterFill != nil {
			c.afterFill(keys.value, err)
		}
		return v, err
	})
	return f, ch, leader
}

// leave removes a caller from f; the last one out ends f's wait for a slot.
func (fs *flights) leave(f *flight) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f.callers--; f.callers == 0 {
		f.cancel(errAbandoned)
	}
}

// done retires f once its fill has returned.
func (fs *flights) done(key string, f *flight) {
	fs.mu.Lock()
	if fs.m[key] == f {
		delete(fs.m, key)
	}
	fs.mu.Unlock()
	f.cancel(errFillDone)
}

// forget makes the next caller of key start a new fill, not join one begun
// before now: a Delete must not be answered by a fetch it meant to drop.
func (fs *flights) forget(c *Cache, key string) {
	fs.mu.Lock()
	delete(fs.m, key)
	c.group.Forget(key)
	fs.mu.Unlock()
}

// latestDeadline is the latest of f's callers' deadlines, or zero when one
// of them has none.
func (fs *flights) latestDeadline(f *flight) time.Time {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f.open {
		return time.Time{}
	}
	return f.deadline
}
