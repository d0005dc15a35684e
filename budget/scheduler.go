package budget

import (
	"container/list"
	"context"
	"errors"
	"math"
	mrand "math/rand/v2"
	"slices"
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
	bg   sync.WaitGroup

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

// keyQueue is one API key's viewers waiting on this instance.
type keyQueue struct {
	name    string
	waiting list.List // of *waiter
	over    bool      // over its fleet-wide share at the latest look
	cap     float64   // then, its slots per second
}

type waiter struct {
	host     bool
	deadline func() time.Time // nil or zero: none
	margin   time.Duration    // its slot must come this long before the deadline
	kq       *keyQueue
	done     chan error // buffered 1: nil is a slot
	el       *list.Element
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
	s.stop()
	s.bg.Wait()
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
	if start {
		s.bg.Add(1)
		go s.poll()
	} else if w.host {
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

func (s *Scheduler) pushLocked(w *waiter, key string) {
	if w.host {
		w.el = s.hosts.PushBack(w)
		return
	}
	kq := s.byKey[key]
	if kq == nil {
		kq = &keyQueue{name: key}
		s.byKey[key] = kq
		s.viewers = append(s.viewers, kq)
		kq.cap, kq.over = s.shares.over(key)
	}
	w.kq = kq
	w.el = kq.waiting.PushBack(w)
}

func (s *Scheduler) removeLocked(w *waiter) {
	if w.host {
		s.hosts.Remove(w.el)
	} else {
		w.kq.waiting.Remove(w.el)
		if w.kq.waiting.Len() == 0 {
			s.dropKeyLocked(w.kq)
		}
	}
	w.el = nil
}

func (s *Scheduler) dropKeyLocked(kq *keyQueue) {
	delete(s.byKey, kq.name)
	for i, q := range s.viewers {
		if q == kq {
			s.viewers = append(s.viewers[:i], s.viewers[i+1:]...)
			if s.turn > i {
				s.turn--
			}
			break
		}
	}
	if s.turn >= len(s.viewers) {
		s.turn = 0
	}
}

// queuedLocked counts the waiting fetches.
func (s *Scheduler) queuedLocked() int {
	n := s.hosts.Len()
	for _, kq := range s.viewers {
		n += kq.waiting.Len()
	}
	return n
}

// paceLocked is the time between slots this instance has been getting while
// fetches waited, never less than the fleet's interval: with other
// instances drawing on the same budget, it gets a part of it.
func (s *Scheduler) paceLocked() time.Duration {
	return time.Duration(float64(time.Second) / max(s.served, float64(s.opts.Rate)/10))
}

// expectedWaitLocked is how long r would wait if queued now: hosts wait for
// the hosts ahead at the fleet's full rate; a viewer for the hosts, and for
// as many of each key's viewers as its own key has ahead (keys take turns).
func (s *Scheduler) expectedWaitLocked(r Request) time.Duration {
	if r.Class == ClassHost {
		return time.Duration(s.hosts.Len()) * s.interval
	}
	mine := 0
	if kq := s.byKey[r.Key]; kq != nil {
		mine = kq.waiting.Len()
	}
	place := s.hosts.Len()
	for _, kq := range s.viewers {
		place += min(kq.waiting.Len(), mine+1)
	}
	if s.byKey[r.Key] == nil {
		place++
	}
	return time.Duration(place-1) * s.paceLocked()
}

// refuseLateLocked refuses at once, with the queue's drain time, every
// waiter whose deadline comes before its expected turn, when the next slot
// comes in next: it could only wait in vain.
func (s *Scheduler) refuseLateLocked(next time.Duration) {
	now := time.Now()
	drain := next + time.Duration(max(0, s.queuedLocked()-1))*s.paceLocked()
	late := func(w *waiter, place int, pace time.Duration) bool {
		if w.deadline == nil {
			return false
		}
		if d := w.deadline(); d.IsZero() || !d.Add(-w.margin).Before(now.Add(next+time.Duration(place)*pace)) {
			return false
		}
		w.el = nil
		w.done <- s.refuse(unavailable(ReasonQueue, drain))
		return true
	}
	place := 0
	for el := s.hosts.Front(); el != nil; {
		next := el.Next()
		if w := el.Value.(*waiter); late(w, place, s.interval) {
			s.hosts.Remove(el)
		} else {
			place++
		}
		el = next
	}
	pace := s.paceLocked()
	for _, kq := range slices.Clone(s.viewers) {
		i := 0
		for el := kq.waiting.Front(); el != nil; i++ {
			next := el.Next()
			ahead := s.hosts.Len()
			for _, other := range s.viewers {
				ahead += min(other.waiting.Len(), i)
			}
			if w := el.Value.(*waiter); late(w, ahead, pace) {
				kq.waiting.Remove(el)
				i--
			}
			el = next
		}
		if kq.waiting.Len() == 0 {
			s.dropKeyLocked(kq)
		}
	}
}

// paceWindow accumulates the slots granted, and the time, while fetches
// waited.
type paceWindow struct {
	slots int
	busy  time.Duration
}

// measurePaceLocked updates served, the slots per second this instance has
// been getting while fetches waited, once a second of such time has passed:
// the fleet's pollers take turns unevenly, so shorter looks would swing.
func (s *Scheduler) measurePaceLocked(granted int, backlog bool) {
	now := time.Now()
	if !s.last.IsZero() {
		s.window.slots += granted
		s.window.busy += now.Sub(s.last)
	}
	s.last = now
	if !backlog {
		s.last = time.Time{}
	}
	if s.window.busy >= time.Second {
		s.served = 0.5*s.served + 0.5*float64(s.window.slots)/s.window.busy.Seconds()
		s.window = paceWindow{}
	}
}

// level is one kind of fetch the poller asks slots for.
type level struct {
	host  bool
	over  bool
	depth int
}

func (s *Scheduler) levels() []level {
	return []level{{host: true, depth: s.depths.host}, {depth: s.depths.viewer}, {over: true, depth: s.depths.over}}
}

// countLocked is how many fetches of lv wait.
func (s *Scheduler) countLocked(lv level) int {
	if lv.host {
		return s.hosts.Len()
	}
	n := 0
	for _, kq := range s.viewers {
		if kq.over == lv.over {
			n += kq.waiting.Len()
		}
	}
	return n
}

// grantLocked gives n slots to the fetches of one class: hosts in arrival
// order, viewers one key after another. It returns how many it gave.
func (s *Scheduler) grantLocked(host bool, n int) int {
	return s.grantWhere(host, func(*keyQueue) bool { return true }, n)
}

func (s *Scheduler) grantLevelLocked(lv level, n int) int {
	return s.grantWhere(lv.host, func(kq *keyQueue) bool { return kq.over == lv.over }, n)
}

// grantKeyLocked gives n slots to kq's fetches.
func (s *Scheduler) grantKeyLocked(kq *keyQueue, n int) int {
	return s.grantWhere(false, func(q *keyQueue) bool { return q == kq }, n)
}

func (s *Scheduler) grantWhere(host bool, eligible func(*keyQueue) bool, n int) int {
	given := 0
	if host {
		for ; given < n && s.hosts.Len() > 0; given++ {
			w := s.hosts.Remove(s.hosts.Front()).(*waiter)
			w.el = nil
			w.done <- nil
		}
		return given
	}
	for given < n && len(s.viewers) > 0 {
		progressed := false
		for range len(s.viewers) {
			if given == n || len(s.viewers) == 0 {
				break
			}
			kq := s.viewers[s.turn]
			if !eligible(kq) {
				s.turn = (s.turn + 1) % len(s.viewers)
				continue
			}
			w := kq.waiting.Remove(kq.waiting.Front()).(*waiter)
			w.el = nil
			w.done <- nil
			s.shares.used(kq.name)
			given++
			progressed = true
			if kq.waiting.Len() == 0 {
				s.dropKeyLocked(kq) // the next key now sits at turn
			} else {
				s.turn = (s.turn + 1) % len(s.viewers)
			}
		}
		if !progressed {
			break
		}
	}
	return given
}

// failAllLocked ends every wait with err.
func (s *Scheduler) failAllLocked(err error) {
	for s.hosts.Len() > 0 {
		w := s.hosts.Remove(s.hosts.Front()).(*waiter)
		w.el = nil
		w.done <- err
	}
	for _, kq := range s.viewers {
		for kq.waiting.Len() > 0 {
			w := kq.waiting.Remove(kq.waiting.Front()).(*waiter)
			w.el = nil
			w.done <- err
		}
		delete(s.byKey, kq.name)
	}
	s.viewers, s.turn = nil, 0
}

// poll grants slots, level by level, until the queue is empty. Each round
// asks the limiter once per level that waits, for as many slots as wait, so
// Redis commands per fetch stay a small constant however many wait.
func (s *Scheduler) poll() {
	defer s.bg.Done()
	for {
		s.mu.Lock()
		if s.life.Err() != nil || s.queuedLocked() == 0 {
			s.failAllLocked(ErrClosed)
			s.polling = false
			s.updateGaugesLocked()
			s.mu.Unlock()
			return
		}
		if left := s.cool.left(); left > 0 {
			s.failAllLocked(s.refuse(unavailable(ReasonCooldown, left)))
			s.mu.Unlock()
			continue
		}
		keys := make([]string, 0, len(s.viewers))
		for _, kq := range s.viewers {
			keys = append(keys, kq.name)
		}
		s.mu.Unlock()

		fleet := s.opts.Fleet()
		if fleet {
			s.shares.refresh(s.life, keys)
		}
		wait, granted := s.round(fleet)
		s.mu.Lock()
		s.refuseLateLocked(wait)
		backlog := s.queuedLocked() > 0
		s.measurePaceLocked(granted, backlog)
		s.updateGaugesLocked()
		s.mu.Unlock()
		if !backlog {
			continue
		}
		select {
		case <-time.After(wait + mrand.N(s.interval/4+1)):
		case <-s.kick:
		case <-s.life.Done():
		}
	}
}

// round asks for slots level by level and grants them; it returns how long
// to wait before the next round, and how many slots it granted.
func (s *Scheduler) round(fleet bool) (wait time.Duration, granted int) {
	s.mu.Lock()
	for _, kq := range s.viewers {
		kq.cap, kq.over = 0, false
		if fleet {
			kq.cap, kq.over = s.shares.over(kq.name)
		}
	}
	s.mu.Unlock()
	for _, lv := range s.levels() {
		if lv.over {
			return s.roundOver(fleet, granted)
		}
		s.mu.Lock()
		n := s.countLocked(lv)
		s.mu.Unlock()
		if n == 0 {
			continue
		}
		got, retry, err := s.take(fleet, lv.depth, n)
		if err != nil {
			fleet = false
			got, retry, _ = s.local.take(s.life, lv.depth, n)
		}
		s.mu.Lock()
		given := s.grantLevelLocked(lv, got)
		// Slots of fetches that left meanwhile go to whoever waits.
		given += s.grantLocked(true, got-given)
		given += s.grantLocked(false, got-given)
		s.mu.Unlock()
		granted += given
		if got < n {
			return max(retry, s.pollGap(lv.depth)), granted
		}
	}
	return s.interval / 2, granted
}

// roundOver serves the keys over their share, each held to its cap
// fleet-wide by a limiter of its own, so that a key flooding many
// instances gets no more than one asking through a single instance.
func (s *Scheduler) roundOver(fleet bool, granted int) (time.Duration, int) {
	s.mu.Lock()
	var over []*keyQueue
	for _, kq := range s.viewers {
		if kq.over {
			over = append(over, kq)
		}
	}
	s.mu.Unlock()
	wait := s.pollGap(s.depths.over)
	for _, kq := range over {
		s.mu.Lock()
		n := kq.waiting.Len()
		s.mu.Unlock()
		if n == 0 {
			continue
		}
		capped, retry, err := s.takeCap(kq.name, kq.cap, n)
		if err != nil || capped == 0 {
			wait = min(wait, max(retry, s.interval/2))
			continue
		}
		got, retry, err := s.take(fleet, s.depths.over, capped)
		if err != nil {
			got, retry, _ = s.local.take(s.life, s.depths.over, capped)
		}
		s.mu.Lock()
		given := s.grantKeyLocked(kq, got)
		given += s.grantLocked(true, got-given)
		given += s.grantLocked(false, got-given)
		s.mu.Unlock()
		granted += given
		if got < capped {
			return max(retry, wait), granted
		}
	}
	return wait, granted
}

// pollGap is the least wait between two asks at depth: asking no more often
// than half the depth's worth of slots lets one answer grant several, and a
// slow rate is still asked every quarter second.
func (s *Scheduler) pollGap(depth int) time.Duration {
	return min(time.Duration(depth)*s.interval/2, 250*time.Millisecond)
}

// takeCap takes up to n slots of key's fair-share limiter at perSecond.
func (s *Scheduler) takeCap(key string, perSecond float64, n int) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(s.life, 2*time.Second)
	defer cancel()
	limit := redis_rate.Limit{Rate: max(1, int(math.Ceil(perSecond))), Period: time.Second, Burst: s.depths.over + 1}
	return takeWhole(ctx, s.limiter, s.opts.Prefix+":fair:"+member(key), limit, n)
}

func (s *Scheduler) take(fleet bool, depth, n int) (int, time.Duration, error) {
	if !fleet {
		return s.local.take(s.life, depth, n)
	}
	ctx, cancel := context.WithTimeout(s.life, 2*time.Second)
	defer cancel()
	return s.fleet.take(ctx, depth, n)
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
