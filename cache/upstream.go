package cache

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/maypok86/otter/v2"

	"github.com/tokencache/tokencache/budget"
	"github.com/tokencache/tokencache/polyv"
)

// provenFor is how long a channel Polyv answered for counts as legal: its
// fetches then call without waiting for one another.
const provenFor = time.Minute

// channelProbes let one call at a time go to Polyv for a channel this
// process has not lately seen Polyv accept, so that many viewers of an
// illegal channel cost one call per instance, not one each.
type channelProbes struct {
	proven *otter.Cache[string, struct{}]

	mu     sync.Mutex
	probes map[string]chan struct{} // closed when the channel's probe ends
}

func newChannelProbes() channelProbes {
	return channelProbes{
		proven: otter.Must(&otter.Options[string, struct{}]{MaximumSize: 10000, ExpiryCalculator: otter.ExpiryWriting[string, struct{}](provenFor)}),
		probes: map[string]chan struct{}{},
	}
}

// take returns once channel is proven, or this caller is its probe: then
// done must be called with whether Polyv accepted the channel.
func (p *channelProbes) take(ctx context.Context, channel string) (done func(accepted bool), err error) {
	for {
		if _, ok := p.proven.GetIfPresent(channel); ok {
			return func(bool) {}, nil
		}
		p.mu.Lock()
		ch, busy := p.probes[channel]
		if !busy {
			ch = make(chan struct{})
			p.probes[channel] = ch
			p.mu.Unlock()
			return func(accepted bool) {
				if accepted {
					p.proven.Set(channel, struct{}{})
				}
				p.mu.Lock()
				delete(p.probes, channel)
				p.mu.Unlock()
				close(ch)
			}, nil
		}
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// queueForSlot waits for a Polyv slot for k as long as the fill's callers
// wait, and refuses at once what the latest of their deadlines cannot meet.
func (c *Cache) queueForSlot(ctx context.Context, k Key) error {
	var deadline func() time.Time
	if f := flightOf(ctx); f != nil {
		f.queued.Store(true)
		defer f.queued.Store(false)
		deadline = func() time.Time { return c.flights.latestDeadline(f) }
	}
	err := c.waitSlot(ctx, k, deadline)
	if context.Cause(ctx) == errAbandoned {
		if err == nil {
			c.sched.PassOn() // its callers left as the slot came
		}
		return errAbandoned
	}
	return err
}

// callPolyv makes the Polyv call a slot was granted for, unless k's channel
// turns out rejected meanwhile (then it returns that rejection, and no call
// is made) or the fleet cools down after Polyv's rate-limit reply.
func (c *Cache) callPolyv(ctx context.Context, k Key, fleet bool) (Token, *entry, error) {
	done, err := c.channels.take(ctx, k.ChannelID)
	if err != nil {
		return Token{}, nil, err
	}
	accepted := false
	defer func() { done(accepted) }()
	if e, ok := c.channelRejected(ctx, k, fleet); ok {
		return Token{}, &e, nil
	}
	if c.life.Err() != nil {
		return Token{}, nil, errClosed
	}
	probe, err := c.sched.BeforeCall(ctx, fleet)
	if err != nil {
		return Token{}, nil, err
	}
	tok, err := c.callUpstream(ctx, k)
	kind := polyv.Classify(err)
	answered := kind == polyv.KindNone || kind == polyv.KindRejected || kind == polyv.KindMisconfigured
	c.sched.AfterCall(ctx, fleet, probe, kind == polyv.KindRateLimited, answered)
	if kind == polyv.KindRateLimited {
		return Token{}, nil, &UnavailableError{Reason: budget.ReasonCooldown, RetryAfter: c.sched.CooldownLeft()}
	}
	var apiErr *polyv.APIError
	accepted = err == nil || (errors.As(err, &apiErr) && apiErr.Rejected() && !apiErr.ChannelRejected())
	return tok, nil, err
}

// channelRejected looks again, after the wait for a slot, for a rejection of
// k's channel: here, and in Redis unless Polyv accepted the channel lately.
func (c *Cache) channelRejected(ctx context.Context, k Key, fleet bool) (entry, bool) {
	key := c.channelRejectionKey(k)
	if e, ok := c.localGet(key); ok && e.Rejected != nil {
		return e, true
	}
	if _, proven := c.channels.proven.GetIfPresent(k.ChannelID); proven || !fleet {
		return entry{}, false
	}
	gen := c.localGen(key)
	raw, err := c.rdb.Get(ctx, key).Bytes()
	if err != nil {
		return entry{}, false // none, or Redis failed: call as without Redis
	}
	if e, ok := c.decodeLive(key, raw); ok && e.Rejected != nil {
		c.localSetIf(key, e, gen)
		return e, true
	}
	return entry{}, false
}

// callUpstream makes one Polyv call for k and records it. It gives up when
// ctx ends even if the upstream does not, and turns a panic into an error, so
// that no upstream fault can wedge a key.
func (c *Cache) callUpstream(ctx context.Context, k Key) (Token, error) {
	endpoint := polyv.EndpointChatToken
	if k.Kind == KindChannel {
		endpoint = polyv.EndpointChannelToken
	}
	type reply struct {
		tok Token
		err error
	}
	start := time.Now()
	ch := make(chan reply, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				ch <- reply{err: fmt.Errorf("cache: upstream panicked: %v", p)}
			}
		}()
		tok, err := c.requestToken(ctx, k)
		ch <- reply{tok, err}
	}()
	var r reply
	select {
	case r = <-ch:
	case <-ctx.Done():
		r = reply{err: fmt.Errorf("cache: upstream %s: %w", endpoint, ctx.Err())}
	}
	outcome := "ok"
	if r.err != nil {
		outcome = polyv.Classify(r.err).String()
	}
	c.metrics.upstreamRequests.WithLabelValues(endpoint, outcome).Inc()
	c.polyvState.Store(polyvStateOf(r.err))
	if c.opts.OnFetch != nil {
		c.opts.OnFetch(ctx, k, outcome)
	}
	c.metrics.upstreamDuration.WithLabelValues(endpoint).Observe(time.Since(start).Seconds())
	return r.tok, r.err
}

// requestToken asks Polyv for k's token. An upstream that reports no issue
// time gets the time the call started.
func (c *Cache) requestToken(ctx context.Context, k Key) (Token, error) {
	sent := c.opts.Now()
	var tok Token
	if k.Kind == KindChannel {
		t, err := c.upstream.ChannelToken(ctx, k.ChannelID)
		if err != nil {
			return Token{}, err
		}
		tok = Token{Token: t.Token, MediaChannelKey: t.MediaChannelKey, IssuedAt: t.IssuedAt}
	} else {
		t, err := c.upstream.ChatToken(ctx, polyv.ChatTokenRequest{ChannelID: k.ChannelID, UserID: k.UserID, Role: k.Role, Origin: k.Origin})
		if err != nil {
			return Token{}, err
		}
		tok = Token{
			Token: t.Token, MediaChannelKey: t.MediaChannelKey, RoomID: t.RoomID, ChildRoomEnabled: t.ChildRoomEnabled,
			ChatAPIDomain: t.ChatAPIDomain, ChatDomain: t.ChatDomain, IssuedAt: t.IssuedAt,
		}
	}
	if tok.IssuedAt.IsZero() {
		tok.IssuedAt = sent
	}
	tok.Rendered = new(Rendered)
	return tok, nil
}
