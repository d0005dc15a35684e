package budget

import (
	"context"
	"math"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"golang.org/x/time/rate"
)

// depths are how far into the rate limiter's bucket each kind of fetch may
// go, in slots. The bucket refills at the rate; a fetch takes a slot only
// while the slots taken ahead of the schedule stay within its depth. So a
// deeper kind is served while a shallower one waits, and takes nothing
// from it when it does not ask: the reserve is lent until a host needs it.
type depths struct {
	over   int // viewers of a key over its fleet-wide share
	viewer int // viewers of a key within its share
	host   int // host roles: the deepest
}

// A depth under 2 loses budget: a take must then come exactly on time.
func depthsFor(perSecond int) depths {
	viewer := max(4, perSecond/10)
	return depths{over: max(2, viewer/2), viewer: viewer, host: viewer + max(2, viewer/2)}
}

// fleetBucket is the fleet-wide limit, a GCRA in Redis (go-redis/redis_rate),
// whose Burst is the depth a take may reach.
type fleetBucket struct {
	limiter *redis_rate.Limiter
	key     string
	rate    int
}

func (b fleetBucket) take(ctx context.Context, depth, n int) (int, time.Duration, error) {
	return takeWhole(ctx, b.limiter, b.key, redis_rate.Limit{Rate: b.rate, Period: time.Second, Burst: depth}, n)
}

// takeWhole takes up to n whole slots of limit. redis_rate's AllowAtMost
// would do it in one round trip, but when fewer than n are free it takes
// the fraction of a slot left over too and reports only the whole ones:
// half a slot lost per ask on average, a quarter of the budget at 50/s.
// So it asks for all n at once (all or nothing: one round trip while the
// budget has room), and failing that, for nothing, which tells how far
// ahead the schedule runs, and then for exactly the whole slots free.
func takeWhole(ctx context.Context, l *redis_rate.Limiter, key string, limit redis_rate.Limit, n int) (int, time.Duration, error) {
	if n <= limit.Burst {
		res, err := l.AllowN(ctx, key, limit, n)
		if err != nil {
			return 0, 0, err
		}
		if res.Allowed > 0 {
			return n, 0, nil
		}
	}
	peek, err := l.AllowN(ctx, key, limit, 0)
	if err != nil {
		return 0, 0, err
	}
	interval := limit.Period / time.Duration(limit.Rate)
	free := float64(limit.Burst) - float64(peek.ResetAfter)/float64(interval)
	k := min(n, int(math.Floor(free)))
	if k <= 0 {
		return 0, time.Duration((1 - free) * float64(interval)), nil
	}
	res, err := l.AllowN(ctx, key, limit, k)
	if err != nil {
		return 0, 0, err
	}
	if res.Allowed == 0 { // another instance took them meanwhile
		return 0, interval / 2, nil
	}
	return res.Allowed, 0, nil
}

// localBucket is the same limit in this process alone, for while Redis is out
// of use: a token bucket as deep as the deepest kind, of which a shallower
// kind may only take what lies above the deeper kinds' reserve.
type localBucket struct {
	lim   *rate.Limiter
	depth int
	rate  int
}

func newLocalBucket(perSecond, depth int) *localBucket {
	return &localBucket{lim: rate.NewLimiter(rate.Limit(perSecond), depth), depth: depth, rate: perSecond}
}

func (b *localBucket) take(_ context.Context, depth, n int) (int, time.Duration, error) {
	now := time.Now()
	reserve := float64(b.depth - depth)
	free := b.lim.TokensAt(now) - reserve
	k := min(n, int(math.Floor(free)))
	if k > 0 && b.lim.AllowN(now, k) {
		return k, 0, nil
	}
	return 0, time.Duration(max(1-free, 0) / float64(b.rate) * float64(time.Second)), nil
}
