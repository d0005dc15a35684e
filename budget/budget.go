// Package budget schedules the fleet's Polyv calls: a fleet-wide rate
// (POLYV_RATE_LIMIT) shared by every instance through Redis, spent host
// roles first, fairly between API keys, never on a caller who has left, and
// not at all while Polyv's own rate limit has the fleet cooling down.
//
// The guarantees, fleet-wide (docs/design.md has the reasoning):
//   - A host fetch (teacher, admin, assistant) takes a slot viewers cannot:
//     the fleet's rate limiter lets host fetches run HostBurst slots deeper
//     into its bucket. A host waits for no viewer, only for a Redis round
//     trip, and for other hosts once more than HostBurst ask at once.
//   - Between API keys, a key that used more than its share of the rate in
//     the last second (the rate over the keys waiting anywhere in the fleet)
//     is served only from a shallower bucket, after every key under its
//     share: a key flooding every instance leaves the others their share.
//     Inside one instance, keys take turns (round robin).
//   - A fetch whose deadline comes before its expected turn is refused at
//     once, with the queue's drain time; one whose callers all left leaves
//     the queue and costs nothing.
//   - Polyv's own rate-limit reply stops every call in the fleet for a
//     cool-down, but one probe at its end.
package budget

import (
	"fmt"
	"math"
	"strconv"
	"time"
)

// Reason says why no Polyv call could be made.
type Reason string

// The reasons of an UnavailableError.
const (
	ReasonQueue      Reason = "queue"       // the budget's queue is longer than the caller's deadline
	ReasonCooldown   Reason = "cooldown"    // Polyv rate-limited the fleet: no calls until the cool-down ends
	ReasonKeyRate    Reason = "key_rate"    // the API key's own rate is used up
	ReasonBulkShare  Reason = "bulk_share"  // bulk items used their share of the budget
	ReasonDeleteRate Reason = "delete_rate" // the API key's delete budget is used up
)

// UnavailableError says no Polyv call could be made in time, and why.
type UnavailableError struct {
	Reason     Reason
	RetryAfter time.Duration
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("budget: upstream unavailable (%s); retry after %v", e.Reason, e.RetryAfter)
}

// RetryAfterSeconds is RetryAfter rounded up to whole seconds, at least 1,
// as a Retry-After header wants it.
func (e *UnavailableError) RetryAfterSeconds() string {
	return strconv.Itoa(max(1, int(math.Ceil(e.RetryAfter.Seconds()))))
}

func unavailable(why Reason, retryAfter time.Duration) error {
	return &UnavailableError{Reason: why, RetryAfter: retryAfter}
}

// Class is a fetch's priority class.
type Class int

// The classes, highest first.
const (
	ClassViewer Class = iota // guest, viewer, and the service's own refreshes
	ClassHost                // teacher, admin, assistant
)

// ClassOf returns the class of a Polyv role.
func ClassOf(role string) Class {
	switch role {
	case "teacher", "admin", "assistant":
		return ClassHost
	}
	return ClassViewer
}

func (c Class) String() string {
	if c == ClassHost {
		return "host"
	}
	return "viewer"
}

// Request is one fetch asking for a slot.
type Request struct {
	Key      string           // the API key's name; empty for the service itself
	Class    Class            // hosts are served first
	Rate     int              // the key's own fetches per second, fleet-wide; 0: no cap
	Bulk     bool             // a bulk item, held to Options.BulkShare
	Deadline func() time.Time // the latest of its callers' deadlines, which may move; nil or zero: none
}

// callMargin is the most time a slot must leave before its caller's
// deadline (a quarter of the time the caller gives, if less): a slot any
// later leaves no time for the call, which would be made for a caller who
// has left.
const callMargin = 250 * time.Millisecond

// marginFor is the margin of a caller whose deadline is d.
func marginFor(d time.Time) time.Duration { return min(callMargin, max(time.Until(d), 0)/4) }

// deadline is r's deadline, zero for none.
func (r Request) deadline() time.Time {
	if r.Deadline == nil {
		return time.Time{}
	}
	return r.Deadline()
}

// Options configure a Scheduler. Zero fields take the defaults noted.
type Options struct {
	// Prefix starts every Redis key of the scheduler, e.g. "tc:v1:upstream".
	Prefix string
	// Rate is the fleet-wide Polyv calls per second; while Redis is out of
	// use, each instance allows this many on its own. Required.
	Rate int
	// BulkShare is the most of Rate bulk items may use; it defaults to 0.5.
	BulkShare float64
	// Cooldown is the first fleet-wide pause after Polyv's rate-limit
	// reply, doubled while the probe at its end is refused, up to
	// MaxCooldown; it defaults to DefaultCooldown.
	Cooldown time.Duration
	// DeleteRate is the DELETEs per second one API key may make, fleet-wide:
	// each forces a refetch. It defaults to DefaultDeleteRate.
	DeleteRate int
	// Fleet reports whether Redis is in use now; while it is not, the limits
	// are this process's own. Nil: always.
	Fleet func() bool
	// OnCooldown, if set, is told when this instance sees the fleet enter a
	// cool-down (for how long) and leave it (0).
	OnCooldown func(left time.Duration)
	// Metrics defaults to NewMetrics(); register its Collectors.
	Metrics *Metrics
}

// The defaults of Options.
const (
	DefaultCooldown   = 10 * time.Second
	MaxCooldown       = 5 * time.Minute
	DefaultDeleteRate = 10
	DefaultBulkShare  = 0.5
)

func (o *Options) setDefaults() {
	if o.BulkShare == 0 {
		o.BulkShare = DefaultBulkShare
	}
	if o.Cooldown == 0 {
		o.Cooldown = DefaultCooldown
	}
	if o.DeleteRate == 0 {
		o.DeleteRate = DefaultDeleteRate
	}
	if o.Fleet == nil {
		o.Fleet = func() bool { return true }
	}
	if o.Metrics == nil {
		o.Metrics = NewMetrics()
	}
}
