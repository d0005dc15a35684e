package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/tokencache/tokencache/budget"
	"github.com/tokencache/tokencache/internal/seal"
	"github.com/tokencache/tokencache/polyv"
)

// EncryptionKey is one AES-256 key (32 bytes) with the id stored beside what
// it seals; ids are non-empty, without ':', and unique.
type EncryptionKey = seal.Key

// Options configures a Cache. Zero fields take the defaults noted.
type Options struct {
	// Prefix starts every Redis key; it defaults to "tc:".
	Prefix string
	// TTL is how long a token is kept, under Polyv's 6h; it defaults to 5h45m.
	TTL time.Duration
	// RefreshAfter is the age from which hits refresh in the background; it
	// defaults to 5h.
	RefreshAfter time.Duration
	// NegativeTTL is how long a Polyv rejection is remembered; it defaults to 30s.
	NegativeTTL time.Duration
	// LocalSize bounds the local cache in entries; 0 turns it off.
	// DefaultLocalSize suits most fleets.
	LocalSize int
	// RateLimit is the fleet-wide Polyv calls per second; it defaults to 100.
	// While Redis is down, each instance allows this many on its own.
	RateLimit int
	// BulkShare is the most of RateLimit that bulk items may use, so that
	// single requests always find room; it defaults to 0.5.
	BulkShare float64
	// LeaseTTL is how long a fetch lease lives without renewal; the holder
	// renews it while it works, so this bounds how long a dead holder blocks
	// others. It defaults to 3s.
	LeaseTTL time.Duration
	// FillTimeout bounds a shared fetch, whoever waits for it; it defaults to 15s.
	FillTimeout time.Duration
	// PollInterval is the least wait, and the jitter, between checks while
	// another instance fetches. A waiter is woken by the fetch's store over
	// pub/sub, and otherwise checks when the holder's lease would lapse, at
	// most LeaseTTL apart. It defaults to 100ms.
	PollInterval time.Duration
	// RefreshBackoff is how long the fleet waits after a failed refresh
	// before trying again, doubled after each further failure in a row (up
	// to 10m); it defaults to 30s.
	RefreshBackoff time.Duration
	// BreakerFailures is how many Redis failures in a row open the circuit;
	// it defaults to 5.
	BreakerFailures uint32
	// BreakerOpenFor is how long the open circuit skips Redis before it
	// probes again; it defaults to 5s.
	BreakerOpenFor time.Duration
	// Cooldown is the first fleet-wide pause after Polyv's rate-limit
	// reply, doubled while the probe at its end is refused (at most 5m); it
	// defaults to 10s.
	Cooldown time.Duration
	// OnCooldown, if set, is told when this instance sees the fleet enter a
	// Polyv cool-down (for how long) and leave it (0).
	OnCooldown func(left time.Duration)
	// DeleteRate is the Deletes per second one caller may make, fleet-wide:
	// each forces a refetch. It defaults to 10.
	DeleteRate int
	// OnCircuitChange, if set, is told each time the Redis circuit breaker
	// changes state: "closed", "open" or "half-open".
	OnCircuitChange func(from, to string)
	// OnFetch, if set, is called after every Polyv call with the caller's
	// ctx (see CallerFrom; a background refresh has no caller), the key, and
	// the outcome: "ok" or the error's polyv.Kind. The audit trail uses it.
	OnFetch func(ctx context.Context, k Key, outcome string)
	// EncryptionKeys seal values at rest (AES-256-GCM) and hide identities in
	// key names; the first seals, all open. Empty: values in clear.
	EncryptionKeys []EncryptionKey
	// Logger takes the cache's warnings (a wrong encryption key, say); it
	// defaults to slog.Default().
	Logger *slog.Logger
	// Now is the clock for token ages; it defaults to time.Now.
	Now func() time.Time
	// Metrics defaults to NewMetrics(); register its Collectors.
	Metrics *Metrics
}

// The defaults of Options' fields, for callers that show or restate them.
const (
	DefaultPrefix       = "tc:"
	DefaultTTL          = 5*time.Hour + 45*time.Minute
	DefaultRefreshAfter = 5 * time.Hour
	DefaultNegativeTTL  = 30 * time.Second
	DefaultLocalSize    = 100000
	DefaultRateLimit    = 100
	DefaultBulkShare    = 0.5
	DefaultCooldown     = budget.DefaultCooldown
	DefaultDeleteRate   = budget.DefaultDeleteRate

	DefaultLeaseTTL        = 3 * time.Second
	DefaultFillTimeout     = 15 * time.Second
	DefaultPollInterval    = 100 * time.Millisecond
	DefaultRefreshBackoff  = 30 * time.Second
	DefaultBreakerOpenFor  = 5 * time.Second
	DefaultBreakerFailures = 5
)

// setDefaults fills every zero setting but LocalSize, whose zero means off.
// New makes the Metrics, so that Validate builds none.
func (o *Options) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	def(&o.TTL, DefaultTTL)
	def(&o.RefreshAfter, DefaultRefreshAfter)
	def(&o.NegativeTTL, DefaultNegativeTTL)
	def(&o.LeaseTTL, DefaultLeaseTTL)
	def(&o.FillTimeout, DefaultFillTimeout)
	def(&o.PollInterval, DefaultPollInterval)
	def(&o.RefreshBackoff, DefaultRefreshBackoff)
	def(&o.BreakerOpenFor, DefaultBreakerOpenFor)
	if o.RateLimit == 0 {
		o.RateLimit = DefaultRateLimit
	}
	if o.BulkShare == 0 {
		o.BulkShare = DefaultBulkShare
	}
	def(&o.Cooldown, DefaultCooldown)
	if o.DeleteRate == 0 {
		o.DeleteRate = DefaultDeleteRate
	}
	if o.BreakerFailures == 0 {
		o.BreakerFailures = DefaultBreakerFailures
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// OptionError is one option that breaks a rule.
type OptionError struct {
	Option string // the field of Options
	Value  any
	Rule   string
}

func (e *OptionError) Error() string {
	return fmt.Sprintf("cache: %s %v: %s", e.Option, e.Value, e.Rule)
}

// Validate reports, as *OptionError joined, every option that breaks a rule,
// once zero fields have their defaults.
func (o Options) Validate() error {
	o.setDefaults()
	var errs []error
	check := func(ok bool, option string, value any, rule string) {
		if !ok {
			errs = append(errs, &OptionError{Option: option, Value: value, Rule: rule})
		}
	}
	check(o.TTL > 0 && o.TTL < polyv.TokenValidity, "TTL", o.TTL, fmt.Sprintf("must be positive and under %v, Polyv's token validity", polyv.TokenValidity))
	check(o.RefreshAfter > 0 && o.RefreshAfter < o.TTL, "RefreshAfter", o.RefreshAfter, fmt.Sprintf("must be positive and under TTL (%v)", o.TTL))
	check(o.NegativeTTL > 0, "NegativeTTL", o.NegativeTTL, "must be positive")
	check(o.LocalSize >= 0, "LocalSize", o.LocalSize, "must be 0 (off) or more")
	check(o.RateLimit > 0, "RateLimit", o.RateLimit, "must be positive")
	check(o.BulkShare > 0 && o.BulkShare <= 1, "BulkShare", o.BulkShare, "must be above 0 and at most 1")
	check(o.Cooldown > 0 && o.Cooldown <= budget.MaxCooldown, "Cooldown", o.Cooldown, fmt.Sprintf("must be positive and at most %v", budget.MaxCooldown))
	check(o.DeleteRate > 0, "DeleteRate", o.DeleteRate, "must be positive")
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"LeaseTTL", o.LeaseTTL}, {"FillTimeout", o.FillTimeout}, {"PollInterval", o.PollInterval}, {"RefreshBackoff", o.RefreshBackoff}, {"BreakerOpenFor", o.BreakerOpenFor}} {
		check(d.v > 0, d.name, d.v, "must be positive")
	}
	return errors.Join(errs...)
}
