package budget

import (
	"container/list"
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Redis is what the scheduler needs of Redis: the limiter's scripts, the
// cool-down's, and pipelines for the fleet's shares.
type Redis interface {
	redis.Scripter
	Pipeline() redis.Pipeliner
	Del(ctx context.Context, keys ...string) *redis.IntCmd
}

var _ Redis = redis.UniversalClient(nil)

// ErrClosed is returned to fetches still queued when the Scheduler closes.
var ErrClosed = errors.New("budget: closed")

// Scheduler hands out the fleet's Polyv slots. It is safe for concurrent
// use; Close it when done.
type Scheduler struct {
	opts     Options
	rdb      Redis
	limiter  *redis_rate.Limiter
	interval time.Duration
	depths   depths
	fleet    fleetBucket
	local    *localBucket
	shares   *shares
	caps     sync.Map // "name@rate" -> *capQueue
	bulk     *capQueue
	deletes  sync.Map // key name -> *localBucket, while Redis is out of use
	cool     *cooldown
	metrics  *Metrics

	life context.Context
	stop context.CancelFunc
	bg   sync.WaitGroup // the pollers
	bgMu sync.Mutex     // orders starting a poller against Close

	mu      sync.Mutex
	hosts   list.List   // of *waiter, first come first served
	viewers []*keyQueue // keys with viewers waiting, in turn order
	byKey   map[string]*keyQueue
	turn    int           // index in viewers of the key served next
	polling bool          // a poller runs
	kick    chan struct{} // wakes the poller: a host came
	served  float64       // slots per second this instance got while backlogged
	last    time.Time     // the previous round, while backlogged
	window  paceWindow    // slots and time since served was last measured
}

// New returns a Scheduler over rdb. Its poller starts on the first wait.
func New(rdb Redis, opts Options) *Scheduler {
	opts.setDefaults()
	limiter := redis_rate.NewLimiter(limiterKeys{rdb})
	d := depthsFor(opts.Rate)
	s := &Scheduler{
		opts:     opts,
		rdb:      rdb,
		limiter:  limiter,
		interval: time.Second / time.Duration(opts.Rate),
		depths:   d,
		fleet:    fleetBucket{limiter: limiter, key: opts.Prefix, rate: opts.Rate},
		local:    newLocalBucket(opts.Rate, d.host),
		metrics:  opts.Metrics,
		byKey:    map[string]*keyQueue{},
		kick:     make(chan struct{}, 1),
		served:   float64(opts.Rate),
	}
	s.shares = newShares(rdb, opts.Prefix, opts.Rate)
	s.bulk = newCapQueue(opts.Prefix+":bulk", max(1, int(float64(opts.Rate)*opts.BulkShare)), ReasonBulkShare)
	s.cool = newCooldown(rdb, opts.Prefix, opts.Cooldown, opts.OnCooldown, s.metrics)
	s.life, s.stop = context.WithCancel(context.Background())
	return s
}

// Close fails every queued fetch with ErrClosed and waits for the pollers.
func (s *Scheduler) Close() {
	s.bgMu.Lock()
	s.stop()
	s.bgMu.Unlock()
	s.bg.Wait()
}

// spawn starts poll, which calls s.bg.Done when it returns, unless Close has
// begun: a poller added while Close waits would misuse the WaitGroup.
func (s *Scheduler) spawn(poll func()) bool {
	s.bgMu.Lock()
	defer s.bgMu.Unlock()
	if s.life.Err() != nil {
		return false
	}
	s.bg.Add(1)
	go poll()
	return true
}

// Interval is the fleet-wide emission interval: one slot per Interval.
func (s *Scheduler) Interval() time.Duration { return s.interval }

// MaxBurst is the most slots the fleet may take at once above the rate.
func (s *Scheduler) MaxBurst() int { return s.depths.host }

// Drain is how long this instance's queue needs to empty at the pace it has
// been served.
func (s *Scheduler) Drain() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Duration(s.queuedLocked()) * s.paceLocked()
}

// Queued counts the fetches waiting on this instance.
func (s *Scheduler) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.queuedLocked()
}

// Wait waits for a slot to call Polyv for r: of r's key's own rate, of the
// bulk share for a bulk item, and of the fleet's rate. It returns nil, an
// *UnavailableError (at once when the wait would pass r.Deadline or the
// fleet cools down), ErrClosed, or ctx's error when ctx ends first.
func (s *Scheduler) Wait(ctx context.Context, r Request) error {
	if left := s.cool.left(); left > 0 {
		return s.refuse(unavailable(ReasonCooldown, left))
	}
	for _, q := range s.capsFor(r) {
		if err := q.wait(ctx, s, r.deadline()); err != nil {
			return s.refuse(err)
		}
	}
	return s.refuse(s.waitTurn(ctx, r))
}

// refuse counts err if it is an *UnavailableError, and returns it.
func (s *Scheduler) refuse(err error) error {
	var u *UnavailableError
	if errors.As(err, &u) {
		s.metrics.refused.WithLabelValues(string(u.Reason)).Inc()
	}
	return err
}

// waitTurn queues r for a slot of the fleet's rate.
func (s *Scheduler) waitTurn(ctx context.Context, r Request) error {
	w := &waiter{host: r.Class == ClassHost, deadline: r.Deadline, done: make(chan error, 1)}
	s.mu.Lock()
	if s.life.Err() != nil {
		s.mu.Unlock()
		return ErrClosed
	}
	if d := r.deadline(); !d.IsZero() {
		w.margin = marginFor(d)
		if expect := s.expectedWaitLocked(r); expect > 0 && time.Until(d)-w.margin < expect {
			drain := time.Duration(s.queuedLocked()+1) * s.paceLocked()
			s.mu.Unlock()
			return unavailable(ReasonQueue, drain)
		}
	}
	s.pushLocked(w, r.Key)
	start := !s.polling
	s.polling = true
	s.updateGaugesLocked()
	s.mu.Unlock()
	if start && !s.spawn(s.poll) {
		s.leave(w)
		return ErrClosed
	} else if !start && w.host {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		s.leave(w)
		return ctx.Err()
	}
}

// PassOn gives a slot its fetch will not use to the next fetch waiting
// here, if any.
func (s *Scheduler) PassOn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.grantLocked(true, 1) == 0 {
		s.grantLocked(false, 1)
	}
}

// leave takes w out of the queue; a slot granted to it meanwhile goes to the
// next in line, so that a caller who left costs nothing.
func (s *Scheduler) leave(w *waiter) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if w.el != nil {
		s.removeLocked(w)
		s.metrics.abandoned.Inc()
		s.updateGaugesLocked()
		return
	}
	if err := <-w.done; err == nil && s.grantLocked(true, 1) == 0 {
		s.grantLocked(false, 1)
	}
}

// updateGaugesLocked sets the queue's gauges.
func (s *Scheduler) updateGaugesLocked() {
	viewers := 0
	for _, kq := range s.viewers {
		viewers += kq.waiting.Len()
	}
	s.metrics.depth.WithLabelValues(ClassHost.String()).Set(float64(s.hosts.Len()))
	s.metrics.depth.WithLabelValues(ClassViewer.String()).Set(float64(viewers))
	s.metrics.wait.WithLabelValues(ClassHost.String()).Set((time.Duration(s.hosts.Len()) * s.interval).Seconds())
	s.metrics.wait.WithLabelValues(ClassViewer.String()).Set((time.Duration(s.hosts.Len()+viewers) * s.paceLocked()).Seconds())
}

// capsFor lists the narrower limits r waits for before the fleet's rate.
func (s *Scheduler) capsFor(r Request) []*capQueue {
	var qs []*capQueue
	if r.Rate > 0 && r.Key != "" {
		qs = append(qs, s.capQueue("key:"+r.Key, r.Rate))
	}
	if r.Bulk {
		qs = append(qs, s.bulk)
	}
	return qs
}

func (s *Scheduler) capQueue(name string, perSecond int) *capQueue {
	id := name + "@" + strconv.Itoa(perSecond)
	if q, ok := s.caps.Load(id); ok {
		return q.(*capQueue)
	}
	q, _ := s.caps.LoadOrStore(id, newCapQueue(s.opts.Prefix+":"+name, perSecond, ReasonKeyRate))
	return q.(*capQueue)
}
