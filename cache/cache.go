// Package cache keeps Polyv tokens in Redis and in a bounded local cache, so
// that a fleet of instances makes one Polyv call per token. Concurrent misses
// are merged in-process by singleflight and across the fleet by a Redis lease;
// stale tokens are refreshed ahead of expiry; Polyv rejections are remembered
// briefly; Polyv calls are rate limited fleet-wide; and when Redis fails the
// cache goes on with local state alone until Redis returns.
package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
	"golang.org/x/sync/singleflight"

	"github.com/tokencache/tokencache/budget"
	"github.com/tokencache/tokencache/internal/seal"
	"github.com/tokencache/tokencache/polyv"
)

// Upstream is what the cache needs from Polyv.
type Upstream interface {
	ChatToken(ctx context.Context, req polyv.ChatTokenRequest) (polyv.ChatToken, error)
	ChannelToken(ctx context.Context, channelID string) (polyv.ChannelToken, error)
}

var _ Upstream = (*polyv.Client)(nil)

// Redis is what New needs of a Redis client: the commands the cache runs.
// redis.UniversalClient has them all, so a single server, Sentinel and
// Cluster work alike.
type Redis interface {
	redis.Scripter // the lease scripts and the rate limiter
	Get(ctx context.Context, key string) *redis.StringCmd
	Set(ctx context.Context, key string, value any, expiration time.Duration) *redis.StatusCmd
	Del(ctx context.Context, keys ...string) *redis.IntCmd
	Publish(ctx context.Context, channel string, message any) *redis.IntCmd
	Subscribe(ctx context.Context, channels ...string) *redis.PubSub
	Pipeline() redis.Pipeliner
	Ping(ctx context.Context) *redis.StatusCmd
	AddHook(hook redis.Hook)
}

var _ Redis = redis.UniversalClient(nil)

// Cache serves tokens. It is safe for concurrent use; Close it when done.
type Cache struct {
	rdb      Redis
	upstream Upstream
	opts     Options
	metrics  *Metrics
	id       string // tells this instance's pub/sub messages from others'

	sealer      *seal.Sealer                // nil when encryption is off
	gets        *getBatcher                 // the hit path's GETs, pipelined
	local       *otter.Cache[string, entry] // nil when off
	localGens   generations
	refreshGate *otter.Cache[string, refreshState]
	group       singleflight.Group

	sched      *budget.Scheduler
	flights    flights       // this process's callers of each shared fill
	channels   channelProbes // one call at a time for a channel not yet seen working
	breaker    *gobreaker.CircuitBreaker[struct{}]
	polyvState atomic.Value // string: the latest Polyv call's outcome

	events *events

	names      atomic.Pointer[namer] // nil when encryption is off
	resealed   chan struct{}         // closed when the start-up pass over stored values ends
	resealOnce sync.Once
	log        *slog.Logger
	warned     sync.Map // topics already warned of

	// afterRedisRead, when set by a test, runs between a Redis read and the
	// local-cache write that follows it.
	afterRedisRead func()
	// afterUntrustedRead, when set by a test, runs between reading a value
	// that cannot be used and trying the lease over it.
	afterUntrustedRead func()
	// afterFill, when set by a test, runs when a shared fill has ended,
	// before its callers hear how.
	afterFill func(key string, err error)

	life context.Context // ends at Close; background work runs under it
	stop context.CancelFunc
	bg   sync.WaitGroup
	// storing counts the stores still running after their answer.
	storing sync.WaitGroup
	// detached counts the work that runs on without a caller (fills,
	// stores, refreshes); closed stops new such work once Close has begun.
	closeMu  sync.Mutex
	closed   bool
	detached sync.WaitGroup
}

// New returns a Cache on rdb and starts its pub/sub listener. It installs a
// circuit-breaker hook on rdb, so that a dead Redis fails fast.
func New(rdb Redis, upstream Upstream, opts Options) (*Cache, error) {
	opts.setDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics()
	}
	opts.Metrics.rateLimit.Set(float64(opts.RateLimit))
	opts.Metrics.bulkShare.Set(opts.BulkShare)
	c := &Cache{
		rdb:      rdb,
		upstream: upstream,
		opts:     opts,
		metrics:  opts.Metrics,
		id:       randomID(),
		log:      opts.Logger,
	}
	if len(opts.EncryptionKeys) > 0 {
		var err error
		if c.sealer, err = seal.New(opts.EncryptionKeys); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
	}
	if opts.LocalSize > 0 {
		// otter: reads take no lock, unlike an LRU, which reorders its list on every hit.
		c.local = otter.Must(&otter.Options[string, entry]{MaximumSize: opts.LocalSize})
	}
	c.refreshGate = otter.Must(&otter.Options[string, refreshState]{MaximumSize: 10000})
	c.gets = &getBatcher{rdb: rdb, timeout: batchTimeout}
	// A key another instance changed is dropped here, and so is its fill
	// under way: a Get after a Delete must not join a fetch begun before it.
	forget := func(key string, deleted bool) {
		c.forget(key)
		if deleted {
			c.deleteHiddenTwin(key)
		}
	}
	c.events = newEvents(c.id, c.opts.Prefix+keyVersion+":events", forget, c.dropAllLocal, c.metrics)
	// Waiters for another instance's fetch check Redis rarely; when Redis
	// fails they are told at once, and fetch on their own.
	c.breaker = newBreaker(opts, c.metrics, c.events.wakeAll)
	rdb.AddHook(breakerHook{cb: c.breaker, metrics: c.metrics})
	c.sched = budget.New(rdb, budget.Options{
		Prefix: opts.Prefix + keyVersion + ":upstream", Rate: opts.RateLimit, BulkShare: opts.BulkShare,
		Cooldown: opts.Cooldown, DeleteRate: opts.DeleteRate, Fleet: c.redisUsable, OnCooldown: opts.OnCooldown,
		Metrics: c.metrics.budget,
	})
	c.flights.m = map[string]*flight{}
	c.channels = newChannelProbes()

	c.life, c.stop = context.WithCancel(context.Background())
	c.resealed = make(chan struct{})
	if c.sealer == nil {
		close(c.resealed)
	} else {
		for _, same := range c.sealer.SameBytes() {
			c.log.Warn("two encryption key ids hold the same key: give each id its own key", "key", same)
		}
		if err := c.startNames(); err != nil {
			c.stop()
			c.sched.Close()
			return nil, err
		}
		if c.names.Load().fleet {
			c.startReseal()
		}
	}
	c.events.start(unguarded(c.life), rdb, &c.bg)
	return c, nil
}

// Close stops the background work and waits for it. It does not close rdb.
// Fills, stores and refreshes under way are cancelled and waited for, so no
// Polyv call starts after Close returns.
func (c *Cache) Close() error {
	c.closeMu.Lock()
	c.closed = true
	c.closeMu.Unlock()
	c.stop()
	c.sched.Close()
	c.detached.Wait()
	c.bg.Wait()
	return nil
}

// errClosed ends work asked of a closed Cache.
var errClosed = errors.New("cache: closed")

// track counts one piece of detached work for Close to wait for, unless
// Close has begun: then ok is false and the work must not start.
func (c *Cache) track() (done func(), ok bool) {
	c.closeMu.Lock()
	defer c.closeMu.Unlock()
	if c.closed {
		return nil, false
	}
	c.detached.Add(1)
	return c.detached.Done, true
}

// ChatToken returns the chat token for req.
func (c *Cache) ChatToken(ctx context.Context, req polyv.ChatTokenRequest) (Token, Result, error) {
	return c.Get(ctx, Key{ChannelID: req.ChannelID, UserID: req.UserID, Role: req.Role, Origin: req.Origin})
}

// ChannelToken returns the old channel token of channelID.
func (c *Cache) ChannelToken(ctx context.Context, channelID string) (Token, Result, error) {
	return c.Get(ctx, ChannelKey(channelID))
}

// Get returns the token of k from the local cache, Redis or Polyv, and how it
// was served. Errors are Polyv's (see polyv.Classify), *UnavailableError, or
// ctx's.
func (c *Cache) Get(ctx context.Context, k Key) (Token, Result, error) {
	tok, res, err := c.get(ctx, k)
	if err != nil && res != ResultNegative {
		res = ResultError
	}
	c.metrics.result(res)
	return tok, res, err
}

func (c *Cache) get(ctx context.Context, k Key) (Token, Result, error) {
	keys := c.keysOf(k)
	if e, ok := c.localGet(keys.value); ok {
		return c.serve(k, keys, e, ResultHitLocal)
	}
	if c.redisUsable() {
		gen := c.localGen(keys.value)
		e, found, err := c.redisGet(ctx, keys.value)
		if err == nil && found {
			if c.afterRedisRead != nil {
				c.afterRedisRead()
			}
			c.localSetIf(keys.value, e, gen)
			return c.serve(k, keys, e, ResultHitRedis)
		}
		if ctx.Err() != nil {
			return Token{}, ResultError, ctx.Err()
		}
	}
	return c.fillShared(ctx, k, keys)
}

// Peek returns k's token if this instance holds it in memory, as Get
// would serve it, with no Redis or Polyv work and no context: the hit path.
// ok is false when Get must be called.
func (c *Cache) Peek(k Key) (tok Token, res Result, ok bool, err error) {
	keys := c.keysOf(k)
	e, found := c.localGet(keys.value)
	if !found {
		return Token{}, "", false, nil
	}
	tok, res, err = c.serve(k, keys, e, ResultHitLocal)
	c.metrics.result(res)
	return tok, res, true, err
}

// serve turns a found entry into the answer, starting a refresh when the
// token is stale.
func (c *Cache) serve(k Key, keys redisKeys, e entry, hit Result) (Token, Result, error) {
	if e.Rejected != nil {
		return Token{}, ResultNegative, e.Rejected.err()
	}
	if c.opts.Now().Sub(e.Token.IssuedAt) >= c.opts.RefreshAfter {
		c.startRefresh(k, keys, e.Token.IssuedAt)
		return *e.Token, ResultStale, nil
	}
	return *e.Token, hit, nil
}

// Delete drops the token of k from Redis and from every instance's local
// cache. Each caller has a budget of Deletes (Options.DeleteRate), since
// each forces a refetch: over it, Delete returns *UnavailableError.
func (c *Cache) Delete(ctx context.Context, k Key) error {
	if err := c.sched.AllowDelete(ctx, CallerFrom(ctx).Name, c.redisUsable()); err != nil {
		return err
	}
	if c.sealer != nil && !c.names.Load().fleet {
		return fmt.Errorf("cache: delete: %w", redisFailure(errNamesUnknown))
	}
	// Once begun, the delete and its publish run to the end whatever the
	// caller does, within their own deadline.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), deleteTimeout)
	defer cancel()
	keys := c.keysOf(k)
	err := c.deleteKeys(dctx, keys, c.events.deletedMessage(keys.value))
	if c.sealer != nil {
		// Instances without encryption name k in clear: while encryption
		// is being turned on, one at a time, they read that name. Its
		// message is a plain change: the hidden name is deleted already.
		clear := k.redisKeys(c.opts.Prefix)
		err = errors.Join(err, c.deleteKeys(dctx, clear, c.events.message(clear.value)))
	}
	if err != nil {
		return fmt.Errorf("cache: delete: %w", redisFailure(err))
	}
	return nil
}

// deleteKeys drops one name's value, backoff and lease from Redis and
// tells the fleet; the lease goes too, so a fetch under way stores nothing
// (see storeScript).
func (c *Cache) deleteKeys(ctx context.Context, keys redisKeys, message string) error {
	c.forget(keys.value)
	err := deleteScript.Run(ctx, c.rdb, []string{keys.value, keys.backoff(), keys.lease(), keys.mark()},
		c.events.channel, message, c.markTTL().Milliseconds()).Err()
	// Again, after the value is gone from Redis: a read that raced the
	// delete may have found it.
	c.dropLocal(keys.value)
	c.events.notify(keys.value)
	return err
}

// markTTL is how long a delete mark is kept: longer than any value fetched
// before it is served (TTL), so that no such value is served once it lapses.
func (c *Cache) markTTL() time.Duration { return c.opts.TTL + time.Minute }

// forget drops key's local entry and this process's fill of it under way:
// a Get after a change must not join a fetch begun before it.
func (c *Cache) forget(key string) {
	c.dropLocal(key)
	c.flights.forget(c, key)
}

// deleteHiddenTwin deletes, when encryption is on, the token that another
// instance deleted under its clear name: that instance runs without
// encryption and cannot name the hidden one. (Encrypted instances delete
// the clear name with a plain change message, which does not come here.)
func (c *Cache) deleteHiddenTwin(key string) {
	n := c.names.Load()
	_, id, ok := strings.Cut(key, "}:t:")
	if n == nil || !n.fleet || !ok || !strings.HasPrefix(key, c.opts.Prefix+keyVersion+":") {
		return
	}
	k, err := parseIdentity(id)
	if err != nil {
		return // a hidden name, or not a token's
	}
	untrack, ok := c.track()
	if !ok {
		return
	}
	go func() {
		defer untrack()
		ctx, cancel := context.WithTimeout(c.life, deleteTimeout)
		defer cancel()
		keys := c.keysOf(k)
		_ = c.deleteKeys(ctx, keys, c.events.message(keys.value)) // best effort: the deleting instance could do no more
	}()
}

// errNamesUnknown fails a Delete while the fleet's name key is unknown.
var errNamesUnknown = errors.New("the fleet's name key is not read yet")

// deleteTimeout bounds a Delete's Redis work, which runs whatever its
// caller does.
const deleteTimeout = 2 * time.Second

// batchTimeout bounds one batched GET; each caller also leaves on its own
// context.
const batchTimeout = 2 * time.Second

// Ready reports whether Redis answers.
func (c *Cache) Ready(ctx context.Context) error {
	if err := c.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("cache: redis ping: %w", redisFailure(err))
	}
	return nil
}

// RedisCircuit returns the Redis circuit breaker's state: "closed" when Redis
// is in use, "open" while it is skipped, "half-open" while it is probed.
func (c *Cache) RedisCircuit() string { return c.breaker.State().String() }

// The states PolyvState reports.
const (
	PolyvUnknown       = "unknown"       // no call yet
	PolyvOK            = "ok"            // the last call was answered
	PolyvMisconfigured = "misconfigured" // Polyv refused our credentials, signature or clock
	PolyvUnavailable   = "unavailable"   // the last call failed: 5xx, rate limit, timeout, network
)

// PolyvState is the outcome of the latest Polyv call.
func (c *Cache) PolyvState() string {
	if s, ok := c.polyvState.Load().(string); ok {
		return s
	}
	return PolyvUnknown
}

// RecordPolyvCheck records the outcome of a Polyv call made outside the
// cache, such as the start-up check.
func (c *Cache) RecordPolyvCheck(err error) { c.polyvState.Store(polyvStateOf(err)) }

// redisUsable reports whether Redis is in use: its circuit is not open, and
// with encryption on, the fleet's name key is known.
func (c *Cache) redisUsable() bool {
	return c.breaker.State() != gobreaker.StateOpen && (c.sealer == nil || c.names.Load().fleet)
}

// redisGet reads and decodes a value. An entry that cannot be trusted or has
// outlived its time is reported as not found.
func (c *Cache) redisGet(ctx context.Context, key string) (entry, bool, error) {
	b, mark, err := c.gets.get(ctx, key)
	if errors.Is(err, redis.Nil) {
		return entry{}, false, nil
	}
	if err != nil {
		return entry{}, false, err
	}
	e, ok := c.decodeCurrent(key, b, mark)
	return e, ok, nil
}

// decodeCurrent is decodeLive for a value read with its identity's delete
// mark: a value from before the last DELETE is not found.
func (c *Cache) decodeCurrent(key string, b []byte, mark int64) (entry, bool) {
	e, ok := c.decodeLive(key, b)
	if !ok || e.Mark < mark {
		return entry{}, false
	}
	return e, true
}

// decodeLive decodes a stored value, reporting false for one that cannot be
// trusted or has outlived its time.
func (c *Cache) decodeLive(key string, b []byte) (entry, bool) {
	e, ok := c.decode(key, b)
	if !ok || !c.opts.Now().Before(e.Until) {
		return entry{}, false
	}
	return e, true
}

// tokenUntil is when a token issued at issued leaves the cache: TTL after
// issue, less a jitter so that tokens fetched together do not expire together.
func (c *Cache) tokenUntil(issued time.Time) time.Time {
	spread := min((c.opts.TTL-c.opts.RefreshAfter)/4, 5*time.Minute)
	var jitter time.Duration
	if spread > 0 {
		jitter = mrand.N(spread)
	}
	return issued.Add(c.opts.TTL - jitter)
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
