package budget

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// probeFor bounds a probe: if its instance dies, another probes after this.
const probeFor = 10 * time.Second

// levelMemory is how long the fleet remembers a cool-down's length after
// it ends, so that a refused probe doubles it.
const levelMemory = 10 * time.Minute

// The cool-down's scripts. KEYS are, in this order, the cool-down (its TTL
// is the time left), its level (ms; present from the first refusal until a
// probe succeeds), and the probe's lease; they share a hash tag.
var (
	// cooldownCheckScript, run before every Polyv call, returns {0} when
	// calls may go, {1, ms} while cooling for ms more, {2} when the caller
	// (ARGV[1]) took the probe, for ARGV[2] ms, and {3, ms} when another
	// instance probes, for ms more at most.
	cooldownCheckScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left > 0 then return {1, left} end
if redis.call('EXISTS', KEYS[2]) == 0 then return {0} end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {3, math.max(redis.call('PTTL', KEYS[3]), 1)}`)

	// cooldownEnterScript starts a cool-down after Polyv's rate-limit reply:
	// ARGV[1] ms the first time, then double the last (at most ARGV[2] ms),
	// remembered ARGV[3] ms more. A cool-down under way is left as it is.
	// It returns the cool-down's ms left, and 1 if this call started it.
	cooldownEnterScript = redis.NewScript(`
local left = redis.call('PTTL', KEYS[1])
if left > 0 then return {left, 0} end
local level = tonumber(redis.call('GET', KEYS[2]) or '0')
if level == 0 then level = tonumber(ARGV[1]) else level = math.min(level * 2, tonumber(ARGV[2])) end
redis.call('SET', KEYS[1], '1', 'PX', level)
redis.call('SET', KEYS[2], level, 'PX', level + tonumber(ARGV[3]))
redis.call('DEL', KEYS[3])
return {level, 1}`)

	// cooldownEndScript ends the cool-down after a probe (ARGV[1]) that
	// Polyv answered; with ARGV[2] = 0 the probe failed otherwise, and
	// only its lease is released, for another probe.
	cooldownEndScript = redis.NewScript(`
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[3])
if ARGV[2] == '1' then redis.call('DEL', KEYS[2]) end
return 1`)
)

// cooldown is the fleet-wide pause after Polyv's rate-limit reply, in Redis,
// mirrored here so that fetches are refused without a round trip; while
// Redis is out of use, this instance keeps it alone.
type cooldown struct {
	rdb     Redis
	keys    []string
	base    time.Duration
	owner   string
	notify  func(time.Duration)
	metrics *Metrics

	mu      sync.Mutex
	until   time.Time     // no calls before this, as far as this instance knows
	level   time.Duration // the local cool-down's length; 0: none
	probing bool          // the local probe is out
}

func newCooldown(rdb Redis, prefix string, base time.Duration, notify func(time.Duration), m *Metrics) *cooldown {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	tag := prefix + ":{cooldown}"
	return &cooldown{rdb: rdb, keys: []string{tag, tag + ":level", tag + ":probe"}, base: base, owner: hex.EncodeToString(b), notify: notify, metrics: m}
}

// left is the time left of the cool-down this instance knows of.
func (c *cooldown) left() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Until(c.until)
}

// CooldownLeft is the time left of the fleet's cool-down, as this instance
// knows it; 0 when none runs.
func (s *Scheduler) CooldownLeft() time.Duration { return max(s.cool.left(), 0) }

// set records that the fleet cools down for left more.
func (c *cooldown) set(left time.Duration) {
	c.mu.Lock()
	started := time.Now().After(c.until)
	c.until = time.Now().Add(left)
	c.mu.Unlock()
	c.metrics.cooldownUntil.Set(float64(time.Now().Add(left).Unix()))
	if started && c.notify != nil {
		c.notify(left)
	}
}

// BeforeCall says whether a Polyv call may go now. probe is true when this
// call is the one probe at the end of a cool-down: pass it to AfterCall.
// The error is an *UnavailableError while the fleet cools down.
func (s *Scheduler) BeforeCall(ctx context.Context, fleet bool) (probe bool, err error) {
	c := s.cool
	if left := c.left(); left > 0 {
		return false, s.refuse(unavailable(ReasonCooldown, left))
	}
	if !fleet {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.level == 0 {
			return false, nil
		}
		if c.probing {
			return false, s.refuse(unavailable(ReasonCooldown, time.Second))
		}
		c.probing = true
		return true, nil
	}
	res, err := cooldownCheckScript.Run(ctx, s.rdb, c.keys, c.owner, probeFor.Milliseconds()).Slice()
	if err != nil {
		return false, nil // Redis failed: the local cool-down, checked above, holds
	}
	state, _ := res[0].(int64)
	switch state {
	case 1:
		ms, _ := res[1].(int64)
		c.set(time.Duration(ms) * time.Millisecond)
		return false, s.refuse(unavailable(ReasonCooldown, time.Duration(ms)*time.Millisecond))
	case 2:
		return true, nil
	case 3:
		ms, _ := res[1].(int64)
		return false, s.refuse(unavailable(ReasonCooldown, min(time.Duration(ms)*time.Millisecond, time.Second)))
	}
	return false, nil
}

// AfterCall records a Polyv call's outcome: rateLimited when Polyv refused
// it for rate, answered when Polyv answered it otherwise (a rejection of the
// request included).
func (s *Scheduler) AfterCall(ctx context.Context, fleet, probe, rateLimited, answered bool) {
	c := s.cool
	ctx = context.WithoutCancel(ctx)
	if rateLimited {
		c.metrics.rateLimited.Inc()
		left := c.enterLocal()
		if fleet {
			if res, err := cooldownEnterScript.Run(ctx, s.rdb, c.keys, c.base.Milliseconds(), MaxCooldown.Milliseconds(), levelMemory.Milliseconds()).Slice(); err == nil {
				ms, _ := res[0].(int64)
				left = time.Duration(ms) * time.Millisecond
			}
		}
		c.set(left)
		return
	}
	if !probe {
		return
	}
	c.mu.Lock()
	c.probing = false
	if answered {
		c.level = 0
	}
	c.mu.Unlock()
	if fleet {
		ended := "0"
		if answered {
			ended = "1"
		}
		_ = cooldownEndScript.Run(ctx, s.rdb, c.keys, c.owner, ended).Err()
	}
	if answered && c.notify != nil {
		c.notify(0)
	}
}

// enterLocal starts or doubles this instance's own cool-down, and returns
// its length.
func (c *cooldown) enterLocal() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.probing = false
	if c.level == 0 {
		c.level = c.base
	} else {
		c.level = min(2*c.level, MaxCooldown)
	}
	return c.level
}
