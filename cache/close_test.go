package cache

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Close ends or waits for every detached fill, store and refresh: no Polyv
// call starts after it returns, and the race detector finds nothing.
func TestCloseUnderLoad(t *testing.T) {
	for round := range 5 {
		rdb, _ := backends()[0].open(t)
		clk := newClock()
		up := &fakeUpstream{delay: 20 * time.Millisecond}
		c, err := New(rdb, up, testOptions(func(o *Options) { o.RateLimit = 50; o.Now = clk.Now }))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%4+1)*100*time.Millisecond)
				defer cancel()
				_, _, _ = c.Get(ctx, Key{ChannelID: "c", UserID: fmt.Sprint(round, "-", i), Role: "viewer"})
				if i%5 == 0 { // stale hits start refreshes
					clk.Add(time.Minute)
					_, _, _ = c.Get(context.Background(), Key{ChannelID: "c", UserID: fmt.Sprint(round, "-", i-1), Role: "viewer"})
				}
			}()
		}
		time.Sleep(time.Duration(round*30) * time.Millisecond)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		after := up.calls.Load()
		wg.Wait()
		time.Sleep(100 * time.Millisecond)
		if late := up.calls.Load() - after; late != 0 {
			t.Errorf("round %d: %d Polyv calls after Close returned", round, late)
		}
	}
}
