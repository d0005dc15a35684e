package budget

import (
	"container/list"
	"slices"
	"time"
)

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
