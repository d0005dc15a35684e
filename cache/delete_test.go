package cache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/testwait"
)

// failPublish fails every command that would publish on the events
// channel: PUBLISH itself, or a script given the channel as an argument.
type failPublish struct{ channel string }

func (h failPublish) publishes(cmd redis.Cmder) bool {
	if cmd.Name() == "publish" {
		return true
	}
	if n := cmd.Name(); n == "eval" || n == "evalsha" {
		return strings.Contains(fmt.Sprint(cmd.Args()), h.channel)
	}
	return false
}
func (h failPublish) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h failPublish) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.publishes(cmd) {
			err := errors.New("publish refused by the test")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (h failPublish) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// heldByAnotherInstance fetches viewerKey's token on one instance and has a
// second hold it in its local cache; deleterWith makes a third instance
// whose Redis client carries hook, to delete through.
func heldByAnotherInstance(t *testing.T) (holder *Cache, tok Token, deleterWith func(hook redis.Hook) *Cache) {
	t.Helper()
	rdb := realRedis(t)
	up := &fakeUpstream{}
	fleet := newFleet(t, rdb, up, 2, nil)
	tok, _, err := fleet[1].Get(context.Background(), viewerKey)
	if err != nil {
		t.Fatal(err)
	}
	settle(fleet[1])
	if _, res, _ := fleet[0].Get(context.Background(), viewerKey); res != ResultHitRedis {
		t.Fatalf("instance 0 Get() = %v, want a Redis hit to hold the token locally", res)
	}
	return fleet[0], tok, func(hook redis.Hook) *Cache {
		client := ownClient(t, rdb)
		client.AddHook(hook)
		return newCache(t, client, up, testOptions(nil))
	}
}

// A DELETE whose invalidation cannot be published fails, rather than
// answering as if every instance had dropped the token.
func TestDeleteFailsWhenItCannotPublish(t *testing.T) {
	holder, tok, deleterWith := heldByAnotherInstance(t)
	deleter := deleterWith(failPublish{channel: holder.events.channel})
	err := deleter.Delete(context.Background(), viewerKey)
	if err == nil {
		// Then the token must be gone everywhere, as a 204 promises.
		if got, _, _ := holder.Get(context.Background(), viewerKey); got.Token == tok.Token {
			t.Errorf("Delete() = nil though its publish failed, and the other instance still serves the deleted token")
		}
		return
	}
	if !errors.Is(err, ErrRedisUnavailable) {
		t.Errorf("Delete() = %v, want ErrRedisUnavailable (503 with Retry-After)", err)
	}
}

// slowAfterDelete holds the caller for a while after Redis has run a
// delete (the DEL, or a script on the events channel), as a slow network
// would, so that the caller's deadline passes before the next command.
type slowAfterDelete struct {
	failPublish
	hold time.Duration
}

func (h slowAfterDelete) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if cmd.Name() == "del" || h.publishes(cmd) && cmd.Name() != "publish" {
			time.Sleep(h.hold)
		}
		return err
	}
}

// A DELETE whose caller's deadline passes as it runs still reaches every
// instance, or fails: the invalidation is not sent under the caller's
// context.
func TestDeleteOutlivesItsCaller(t *testing.T) {
	holder, tok, deleterWith := heldByAnotherInstance(t)
	deleter := deleterWith(slowAfterDelete{failPublish{holder.events.channel}, 200 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := deleter.Delete(ctx, viewerKey); err != nil {
		return // refused: nothing promised
	}
	time.Sleep(2 * time.Second) // the contract's bound
	if got, _, _ := holder.Get(context.Background(), viewerKey); got.Token == tok.Token {
		t.Errorf("Delete() = nil, and 2 s later the other instance still serves the deleted token")
	}
}

// A Get after a Delete never joins a fetch begun before it, on the
// instance that deleted or on another: that fetch's token is the one the
// Delete meant to drop.
func TestGetAfterDeleteStartsItsOwnFetch(t *testing.T) {
	for _, where := range []string{"same instance", "another instance"} {
		t.Run(where, func(t *testing.T) {
			rdb := realRedis(t)
			up := &gatedUpstream{gate: make(chan struct{})}
			fleet := newFleet(t, rdb, up, 2, nil)
			deleter := fleet[0]
			if where == "another instance" {
				deleter = fleet[1]
			}
			old := make(chan Token, 1)
			go func() {
				tok, _, _ := fleet[0].Get(context.Background(), viewerKey)
				old <- tok
			}()
			// Not only begun: a fill that took its lease after the Delete
			// would rightly store its token.
			eventually(t, "the first fetch to reach Polyv", func() bool { return up.arrived.Load() == 1 })
			if err := deleter.Delete(context.Background(), viewerKey); err != nil {
				t.Fatal(err)
			}
			// Within the contract's bound instance 0 hears of the Delete,
			// and its fill leaves the fills that later callers join.
			if !testwait.Until(2*time.Second, func() bool { return fleet[0].fillCallers(viewerKey) == 0 }) {
				t.Fatal("2 s after the Delete, a Get would still join the fill begun before it")
			}
			after := make(chan Token, 1)
			go func() {
				tok, _, _ := fleet[0].Get(context.Background(), viewerKey)
				after <- tok
			}()
			eventually(t, "the Get after the Delete to begin its fill", func() bool { return fleet[0].fillCallers(viewerKey) == 1 })
			up.gate <- struct{}{} // the first fetch's call answers
			first := <-old
			close(up.gate) // and any other
			select {
			case got := <-after:
				if got.Token == first.Token {
					t.Errorf("the Get after the Delete got the token of the fetch begun before it (%s)", got.Token)
				}
			case <-time.After(3 * time.Second):
				t.Fatal("the Get after the Delete did not answer")
			}
		})
	}
}

// A value saved before a DELETE (DUMP, or a copy of its bytes) and put back
// after it is never served: each instance reads the identity's delete mark
// with the value, and the value carries the mark current when it was
// fetched. With encryption on, the mark is sealed with the token.
func TestValueRestoredAfterDeleteIsNotServed(t *testing.T) {
	for _, encrypted := range []bool{false, true} {
		t.Run(fmt.Sprint("encrypted=", encrypted), func(t *testing.T) {
			rdb := realRedis(t)
			up := &fakeUpstream{}
			opts := testOptions(func(o *Options) {
				o.LocalSize = 0 // every read goes to Redis
				if encrypted {
					o.EncryptionKeys = []EncryptionKey{encKey("k1", 1)}
				}
			})
			c := newCache(t, rdb, up, opts)
			ctx := context.Background()
			for round := range 2 { // the second DELETE moves the mark on again
				old, _, err := c.Get(ctx, viewerKey)
				if err != nil {
					t.Fatal(err)
				}
				settle(c)
				key := c.keysOf(viewerKey).value
				saved, err := rdb.Dump(ctx, key).Result()
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Delete(ctx, viewerKey); err != nil {
					t.Fatal(err)
				}
				if err := rdb.RestoreReplace(ctx, key, time.Hour, saved).Err(); err != nil {
					t.Fatal(err)
				}
				// The read finds the restored value, and so does the fill's
				// own read (the acquire script) after it: both must refuse it.
				tok, res, err := c.Get(ctx, viewerKey)
				if err != nil {
					t.Fatal(err)
				}
				if tok.Token == old.Token {
					t.Fatalf("round %d: the token saved before the DELETE was served after it (%v)", round, res)
				}
				settle(c)
			}
		})
	}
}
