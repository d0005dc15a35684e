package cache

import (
	"context"
	"testing"
	"time"
)

// Invalidations published while a subscriber reconnects are lost; the
// instance must drop its local cache when it subscribes again, so that 2s
// after a Delete returns no instance serves the deleted token.
func TestDeleteReachesAnInstanceWhosePubSubDropped(t *testing.T) {
	rdb, _ := backends()[1].open(t)
	up := &fakeUpstream{}
	fleet := newFleet(t, rdb, up, 2, nil)
	a, b := fleet[0], fleet[1]
	ctx := context.Background()
	for i := range 10 {
		deleted, _, err := a.Get(ctx, viewerKey)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "b to serve the token from its local cache", func() bool {
			tok, res, _ := b.Get(ctx, viewerKey)
			return tok.Token == deleted.Token && res == ResultHitLocal
		})
		if err := rdb.Do(ctx, "CLIENT", "KILL", "TYPE", "pubsub").Err(); err != nil {
			t.Fatal(err)
		}
		if err := a.Delete(ctx, viewerKey); err != nil {
			t.Fatal(err)
		}
		bound := time.Now().Add(2 * time.Second)
		for {
			tok, res, _ := b.Get(ctx, viewerKey)
			if tok.Token != deleted.Token {
				break
			}
			if time.Now().After(bound) {
				t.Fatalf("round %d: 2s after Delete, b still serves the deleted token (%v)", i, res)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
