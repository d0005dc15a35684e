package cache

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"pgregory.net/rapid"

	"github.com/tokencache/tokencache/internal/redistest"
	"github.com/tokencache/tokencache/polyv"
)

// faultUpstream issues unique tokens, or fails while failing is set, and
// keeps the tokens it issued per identity.
type faultUpstream struct {
	failing atomic.Bool
	n       atomic.Int64

	mu     sync.Mutex
	issued map[string][]string
}

func (u *faultUpstream) ChatToken(_ context.Context, req polyv.ChatTokenRequest) (polyv.ChatToken, error) {
	if u.failing.Load() {
		return polyv.ChatToken{}, &polyv.APIError{Endpoint: polyv.EndpointChatToken, Code: 500, Message: "fail"}
	}
	tok := fmt.Sprint("tok-", u.n.Add(1))
	u.mu.Lock()
	u.issued[req.UserID] = append(u.issued[req.UserID], tok)
	u.mu.Unlock()
	return polyv.ChatToken{Token: tok, MediaChannelKey: "m"}, nil
}

func (u *faultUpstream) ChannelToken(context.Context, string) (polyv.ChannelToken, error) {
	return polyv.ChannelToken{}, errors.New("not used")
}

// issuedFor returns the tokens issued so far for userID.
func (u *faultUpstream) issuedFor(userID string) []string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return slices.Clone(u.issued[userID])
}

// faultWorld is three instances on one real redis-server, and what the
// test knows they may and may not do.
type faultWorld struct {
	srv   *redistest.Server
	admin redis.UniversalClient
	clk   *clock
	up    *faultUpstream
	fleet []*Cache
	opts  Options
	users []string

	// Each instance's stage of the rolling key rotation (rotationKeys), and
	// its client's switch that loses the reply of its next delete script.
	stages []int
	lossy  []*lossyDelete

	redisUp      bool
	redisUpSince time.Time
	deletedBy    map[string]time.Time // token -> when it must no longer be served
	allowed      map[string]int       // userID -> tokens Polyv may have issued
	history      []string             // what happened, for a failure's message
}

func (w *faultWorld) record(format string, args ...any) {
	w.history = append(w.history, time.Now().Format("05.000 ")+fmt.Sprintf(format, args...))
}

// fail reports a broken promise with the story so far: rapid cannot always
// replay a failure that depends on timing.
func (w *faultWorld) fail(t *rapid.T, format string, args ...any) {
	t.Fatalf(format+"\nhistory:\n%s", append(args, strings.Join(w.history, "\n"))...)
}

func (w *faultWorld) key(user string) Key { return Key{ChannelID: "c", UserID: user, Role: "viewer"} }

// allowAll lets every identity cost n more tokens.
func (w *faultWorld) allowAll(n int) {
	for _, u := range w.users {
		w.allowed[u] += n
	}
}

// healthy reports whether Redis has been up, and every circuit closed, long
// enough that nothing should slow a request down.
func (w *faultWorld) healthy() bool {
	if !w.redisUp || time.Since(w.redisUpSince) < 2*w.opts.BreakerOpenFor || w.up.failing.Load() {
		return false
	}
	for _, c := range w.fleet {
		if c.RedisCircuit() != "closed" {
			return false
		}
	}
	return true
}

// get runs one Get and checks what it served.
func (w *faultWorld) get(t *rapid.T, c *Cache, user string, timeout time.Duration) {
	healthy := w.healthy() && timeout >= time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	tok, res, err := c.Get(ctx, w.key(user))
	took := time.Since(start)
	w.record("  instance %d: get %s (%v) = %s %v %v in %v", w.instance(c), user, timeout, tok.Token, res, err, took.Round(time.Millisecond))
	if healthy && took > w.opts.LeaseTTL+time.Second {
		w.fail(t, "invariant 4 (lease held until the store lands): Get(%s) took %v with Redis and Polyv healthy (%v, %v)", user, took, res, err)
	}
	if err != nil {
		return
	}
	if !w.clk.Now().Before(tok.IssuedAt.Add(w.opts.TTL)) {
		w.fail(t, "invariant 1 (never past expiry): Get(%s) served %s past its TTL (%v)", user, tok.Token, res)
	}
	if bound, ok := w.deletedBy[tok.Token]; ok && time.Now().After(bound) {
		w.fail(t, "invariant 2 (gone 2 s after DELETE): Get(%s) served %s, deleted %v ago (%v)", user, tok.Token, time.Since(bound.Add(-2*time.Second)), res)
	}
}

// delete runs one Delete of user's token on instance i. Every token Polyv
// issued for user before it, served or not, must be gone 2 s after it
// returns: a fetch under way must not store its token afterwards.
func (w *faultWorld) delete(i int, user string) {
	w.allowed[user]++ // the deleting instance fetches again even if Redis fails
	before := w.up.issuedFor(user)
	err := w.fleet[i].Delete(context.Background(), w.key(user))
	w.record("  instance %d: delete %s: %v", i, user, err)
	if err != nil {
		return
	}
	bound := time.Now().Add(2 * time.Second)
	if !w.redisUp {
		bound = time.Now().Add(24 * time.Hour)
	}
	for _, tok := range before {
		w.deletedBy[tok] = bound
	}
}

func (w *faultWorld) instance(c *Cache) int {
	for i, f := range w.fleet {
		if f == c {
			return i
		}
	}
	return -1
}

func (w *faultWorld) check(t *rapid.T) {
	for _, u := range w.users {
		if got, max := len(w.up.issuedFor(u)), w.allowed[u]; got > max {
			w.fail(t, "invariant 3 (one call per token): Polyv issued %d tokens for %s, at most %d allowed", got, u, max)
		}
	}
	// go-redis answers with its last dial error until its own redial, once a
	// second, succeeds: a probe in that second opens the circuit once more.
	if w.redisUp && time.Since(w.redisUpSince) > w.opts.BreakerOpenFor+goRedisRedial+500*time.Millisecond {
		for i, c := range w.fleet {
			if c.RedisCircuit() == "open" {
				w.fail(t, "invariant 6 (Redis no single point of failure): instance %d: circuit open %v after Redis came back", i, time.Since(w.redisUpSince))
			}
		}
	}
}

// rotationKeys are the encryption keys at stage n of an endless rolling
// rotation, as the README's steps run it: old, then old,new, then new,old,
// then new, which is the next rotation's old.
func rotationKeys(n int) []EncryptionKey {
	r, old, next := n/3, func(r int) EncryptionKey { return encKey(fmt.Sprint("k", r), byte(r+1)) }, n%3
	switch next {
	case 1:
		return []EncryptionKey{old(r), old(r + 1)}
	case 2:
		return []EncryptionKey{old(r + 1), old(r)}
	}
	return []EncryptionKey{old(r)}
}

// start starts instance i at its rotation stage, on a client of its own.
func (w *faultWorld) start(t *testing.T, i int, subs *redistest.Proxy) (*Cache, error) {
	rdb := ownClient(t, w.admin)
	rdb.AddHook(w.lossy[i])
	opts := w.opts
	opts.EncryptionKeys = rotationKeys(w.stages[i])
	return New(subscribeVia{rdb, subs.Client(t)}, w.up, opts)
}

// lossyDelete, once armed, fails the next delete script of one instance's
// client with a network error, before or after Redis ran it: either the
// publish never happened, or its confirmation was lost.
type lossyDelete struct{ armed, afterRun atomic.Bool }

func (l *lossyDelete) DialHook(next redis.DialHook) redis.DialHook { return next }

func (l *lossyDelete) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !isDeleteScript(cmd) || !l.armed.CompareAndSwap(true, false) {
			return next(ctx, cmd)
		}
		if l.afterRun.Load() {
			_ = next(ctx, cmd)
		}
		err := errors.New("read: connection reset by peer (injected)")
		cmd.SetErr(err)
		return err
	}
}

func (l *lossyDelete) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func isDeleteScript(cmd redis.Cmder) bool {
	args := cmd.Args()
	if len(args) < 2 {
		return false
	}
	switch cmd.Name() {
	case "evalsha":
		return args[1] == deleteScript.Hash()
	case "eval":
		src, _ := args[1].(string)
		return redis.NewScript(src).Hash() == deleteScript.Hash()
	}
	return false
}

// loseDeleteReply deletes user's token on instance i with the script's
// reply lost, before or after Redis ran it: the Delete must fail, or hold.
func (w *faultWorld) loseDeleteReply(t *rapid.T, i int, user string) {
	w.lossy[i].afterRun.Store(rapid.Bool().Draw(t, "after Redis ran it"))
	w.lossy[i].armed.Store(true)
	w.delete(i, user)
	w.lossy[i].armed.Store(false)
}

// goRedisRedial is how often go-redis's pool dials again after it has seen
// as many dial errors as it has connections.
const goRedisRedial = time.Second

// faultBudget sets rapid's budget unless the command line or the
// environment did: a few checks in make test, more under make drills.
func faultBudget(t *testing.T) {
	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	checks, steps := "4", "50"
	if os.Getenv("DRILLS_LONG") != "" {
		checks = "40"
	}
	if !set["rapid.checks"] && os.Getenv("RAPID_CHECKS") == "" {
		_ = flag.Set("rapid.checks", checks)
	}
	if !set["rapid.steps"] && os.Getenv("RAPID_STEPS") == "" {
		_ = flag.Set("rapid.steps", steps)
	}
}

// TestRandomFaults drives three instances on one real redis-server with
// random steps, faults among them, and checks the cache's promises after
// every step: docs/design.md's invariants 1-4 and 6, named by number. A failure prints the steps and a seed to replay them with.
func TestRandomFaults(t *testing.T) {
	faultBudget(t)
	outer := t
	srv := redistest.Start(t)
	subs := redistest.StartProxy(t, srv.Addr) // the instances' pub/sub goes through it
	rapid.Check(t, func(rt *rapid.T) {
		if srv.Killed() {
			srv.Restart(t)
		}
		admin := srv.Client(t)
		if err := admin.FlushAll(context.Background()).Err(); err != nil {
			rt.Fatal(err)
		}
		w := &faultWorld{
			srv: srv, admin: admin, clk: newClock(), up: &faultUpstream{issued: map[string][]string{}},
			users: []string{"u0", "u1", "u2"}, redisUp: true, redisUpSince: time.Now(),
			deletedBy: map[string]time.Time{}, allowed: map[string]int{},
		}
		w.opts = testOptions(func(o *Options) {
			o.Now = w.clk.Now
			o.LeaseTTL = time.Second
			o.RefreshBackoff = 300 * time.Millisecond
			o.FillTimeout = 3 * time.Second
		})
		w.allowAll(1)
		for i := range 3 {
			w.stages = append(w.stages, 0)
			w.lossy = append(w.lossy, &lossyDelete{})
			c, err := w.start(t, i, subs)
			if err != nil {
				rt.Fatal(err)
			}
			w.fleet = append(w.fleet, c)
		}
		defer func() {
			for _, c := range w.fleet {
				_ = c.Close()
			}
		}()
		w.opts = w.fleet[0].opts // with the defaults filled in
		w.opts.EncryptionKeys = nil
		instance := rapid.IntRange(0, 2)
		user := rapid.SampledFrom(w.users)

		actions := map[string]func(*rapid.T){
			"get": func(t *rapid.T) {
				w.get(t, w.fleet[instance.Draw(t, "instance")], user.Draw(t, "user"), 3*time.Second)
			},
			"get with a short deadline": func(t *rapid.T) {
				ms := rapid.IntRange(0, 30).Draw(t, "ms")
				w.get(t, w.fleet[instance.Draw(t, "instance")], user.Draw(t, "user"), time.Duration(ms)*time.Millisecond)
			},
			"burst": func(t *rapid.T) {
				u := user.Draw(t, "user")
				hammer(12, func(i int) {
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					defer cancel()
					_, _, _ = w.fleet[i%3].Get(ctx, w.key(u))
				})
				w.get(t, w.fleet[0], u, 3*time.Second) // checks what the burst left
			},
			"delete": func(t *rapid.T) {
				w.delete(instance.Draw(t, "instance"), user.Draw(t, "user"))
			},
			"delete during a get": func(t *rapid.T) {
				u := user.Draw(t, "user")
				getter, deleter := instance.Draw(t, "getter"), instance.Draw(t, "deleter")
				w.allowed[u]++ // the get may fetch a token the delete then drops
				var tok Token
				var res Result
				var err error
				done := make(chan struct{})
				go func() {
					defer close(done)
					ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
					defer cancel()
					tok, res, err = w.fleet[getter].Get(ctx, w.key(u))
				}()
				time.Sleep(time.Duration(rapid.IntRange(0, 2000).Draw(t, "µs")) * time.Microsecond)
				w.delete(deleter, u)
				<-done
				w.record("  instance %d: get %s during the delete = %s %v %v", getter, u, tok.Token, res, err)
			},
			"past refresh-after": func(t *rapid.T) {
				w.clk.Add(w.opts.RefreshAfter + time.Minute)
				w.allowAll(1)
				if !w.redisUp {
					w.allowAll(len(w.fleet))
				}
			},
			"past TTL": func(t *rapid.T) {
				w.clk.Add(w.opts.TTL + time.Minute)
				w.allowAll(1)
				if !w.redisUp {
					w.allowAll(len(w.fleet))
				}
			},
			"rotate an instance's keys": func(t *rapid.T) {
				// One instance at a time, none more than a stage ahead: a
				// rolling rotation. It costs no Polyv call.
				i := instance.Draw(t, "instance")
				if !w.redisUp || w.stages[i] != slices.Min(w.stages) {
					t.Skip("Redis is down, or instance is a stage ahead")
				}
				_ = w.fleet[i].Close()
				w.stages[i]++
				c, err := w.start(outer, i, subs)
				if err != nil {
					w.fail(t, "instance %d at rotation stage %d: %v", i, w.stages[i], err)
				}
				w.fleet[i] = c
				select {
				case <-c.resealed:
				case <-time.After(10 * time.Second):
					w.fail(t, "instance %d: the re-seal pass did not end", i)
				}
				w.record("  instance %d: keys %v", i, rotationKeys(w.stages[i]))
			},
			"lose a delete's reply": func(t *rapid.T) {
				w.loseDeleteReply(t, instance.Draw(t, "instance"), user.Draw(t, "user"))
			},
			"Polyv fails":    func(t *rapid.T) { w.up.failing.Store(true) },
			"Polyv recovers": func(t *rapid.T) { w.up.failing.Store(false) },
			"kill pub/sub connections": func(t *rapid.T) {
				if !w.redisUp {
					t.Skip("Redis is down")
				}
				_ = w.admin.Do(context.Background(), "CLIENT", "KILL", "TYPE", "pubsub").Err()
			},
			"silence pub/sub connections": func(t *rapid.T) {
				subs.SilenceOpen() // as when their host leaves the network: no error, nothing more
			},
			"kill Redis": func(t *rapid.T) {
				if !w.redisUp {
					t.Skip("Redis is down")
				}
				srv.Kill()
				w.redisUp = false
				w.allowAll(len(w.fleet)) // each instance fetches on its own
				// A delete's message may die with Redis: the bound starts again
				// when Redis is back.
				for tok, bound := range w.deletedBy {
					if bound.After(time.Now()) {
						w.deletedBy[tok] = time.Now().Add(24 * time.Hour)
					}
				}
			},
			"restart Redis": func(t *rapid.T) {
				if w.redisUp {
					t.Skip("Redis is up")
				}
				srv.Restart(outer)
				w.redisUp, w.redisUpSince = true, time.Now()
				w.allowAll(len(w.fleet) + 1) // empty Redis; circuits still open a moment
				for tok, bound := range w.deletedBy {
					if bound.After(time.Now()) {
						w.deletedBy[tok] = time.Now().Add(2 * time.Second)
					}
				}
			},
			"sleep": func(t *rapid.T) {
				time.Sleep(time.Duration(rapid.IntRange(10, 300).Draw(t, "ms")) * time.Millisecond)
			},
		}
		if os.Getenv("DRILLS_LONG") != "" { // 2 s a draw: the long form only
			actions["silence pub/sub, delete, wait out the bound"] = func(t *rapid.T) {
				if !w.redisUp {
					t.Skip("Redis is down")
				}
				u := user.Draw(t, "user")
				for _, c := range w.fleet { // each holds a token of u, likely in its local cache
					w.get(t, c, u, 3*time.Second)
				}
				subs.SilenceOpen()
				w.delete(instance.Draw(t, "instance"), u)
				time.Sleep(2*time.Second + 100*time.Millisecond)
				for _, c := range w.fleet {
					w.get(t, c, u, 3*time.Second)
				}
			}
			actions["lose a delete's reply, wait out the bound"] = func(t *rapid.T) {
				if !w.redisUp {
					t.Skip("Redis is down")
				}
				u := user.Draw(t, "user")
				for _, c := range w.fleet {
					w.get(t, c, u, 3*time.Second)
				}
				w.loseDeleteReply(t, instance.Draw(t, "instance"), u)
				time.Sleep(2*time.Second + 100*time.Millisecond)
				for _, c := range w.fleet {
					w.get(t, c, u, 3*time.Second)
				}
			}
		}
		for name, act := range actions {
			actions[name] = func(t *rapid.T) { w.record("%s", name); act(t) }
		}
		actions[""] = w.check
		rt.Repeat(actions)
	})
}
