package cache

import (
	"context"
	"time"

	"github.com/tokencache/tokencache/budget"
)

// UnavailableError says no Polyv call could be made in time, and why: the
// budget's queue, Polyv's cool-down, or a key's own rate.
type UnavailableError = budget.UnavailableError

// Caller says on whose behalf a request runs, for the Polyv budget: keys
// take turns, a bulk item also takes a slot of the bulk share, and a caller
// with a Rate one of its own limit.
type Caller struct {
	Name  string // the API key's name; empty for the service itself
	Route string // for the audit record
	Rate  int    // this caller's own Polyv fetches per second; 0: none
	Bulk  bool   // a bulk item, held to Options.BulkShare
}

type callerKey struct{}

// WithCaller returns ctx carrying who the request is for.
func WithCaller(ctx context.Context, c Caller) context.Context {
	return context.WithValue(ctx, callerKey{}, c)
}

// CallerFrom returns the Caller ctx carries; the zero Caller is the service.
func CallerFrom(ctx context.Context) Caller {
	c, _ := ctx.Value(callerKey{}).(Caller)
	return c
}

// waitSlot waits for a slot of the budget to call Polyv for k on behalf of
// ctx's caller, giving up at once when deadline (nil: none) cannot be met.
func (c *Cache) waitSlot(ctx context.Context, k Key, deadline func() time.Time) error {
	caller := CallerFrom(ctx)
	return c.sched.Wait(ctx, budget.Request{
		Key: caller.Name, Class: budget.ClassOf(k.Role), Rate: caller.Rate, Bulk: caller.Bulk, Deadline: deadline,
	})
}
