package cache

import (
	"context"
	"fmt"
	"testing"

	"github.com/tokencache/tokencache/polyv"
)

// Polyv's "illegal channel id" rejects the channel, not the viewer: the
// fleet remembers it per channel, for every user, role and origin, and for
// the old channel token too.
func TestChannelRejectionIsRememberedPerChannel(t *testing.T) {
	eachBackend(t, func(t *testing.T, b backend) {
		rdb, _ := b.open(t)
		up := &fakeUpstream{}
		up.setErr(&polyv.APIError{Endpoint: polyv.EndpointChatToken, Code: 403, Message: "illegal channel id: 666"})
		fleet := newFleet(t, rdb, up, 2, nil)
		ctx := context.Background()
		roles := []string{"viewer", "guest", "teacher"}
		for i := range 20 {
			_, res, err := fleet[i%2].Get(ctx, Key{ChannelID: "666", UserID: fmt.Sprint("user-", i), Role: roles[i%3], Origin: "web"})
			if polyv.Classify(err) != polyv.KindRejected {
				t.Fatalf("Get() #%d = %v, %v; want Polyv's rejection", i, res, err)
			}
			if i > 0 && res != ResultNegative {
				t.Errorf("Get() #%d = %v, want negative", i, res)
			}
		}
		if _, _, err := fleet[1].ChannelToken(ctx, "666"); polyv.Classify(err) != polyv.KindRejected {
			t.Errorf("ChannelToken() = %v, want the channel's rejection", err)
		}
		if got := up.calls.Load(); got != 1 {
			t.Errorf("upstream calls for 20 viewers of a rejected channel = %d, want 1", got)
		}
		settle(fleet[0])
		settle(fleet[1])
		if leases, err := rdb.Keys(ctx, "*}:l:*").Result(); err != nil || len(leases) > 0 {
			t.Errorf("fill leases left behind: %v %v", leases, err)
		}
		// Another channel is not affected.
		up.setErr(nil)
		if _, _, err := fleet[0].Get(ctx, Key{ChannelID: "777", UserID: "u", Role: "viewer"}); err != nil {
			t.Errorf("Get() on another channel = %v", err)
		}
	})
}

// A rejected param is the request's own: it is remembered per identity.
func TestParamRejectionIsRememberedPerIdentity(t *testing.T) {
	rdb, _ := backends()[0].open(t)
	up := &fakeUpstream{}
	up.setErr(&polyv.APIError{Endpoint: polyv.EndpointChatToken, Code: 400, Message: "param validate error"})
	c := newCache(t, rdb, up, testOptions(nil))
	ctx := context.Background()
	for range 2 {
		for i := range 5 {
			_, _, _ = c.Get(ctx, Key{ChannelID: "100", UserID: fmt.Sprint("user-", i), Role: "viewer"})
		}
	}
	if got := up.calls.Load(); got != 5 {
		t.Errorf("upstream calls = %d, want 5: one per identity", got)
	}
}
