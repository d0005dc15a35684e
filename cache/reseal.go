package cache

import (
	"context"
	"slices"
	"sort"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/tokencache/tokencache/internal/seal"
)

// At start, with encryption on, an instance passes over the values in
// Redis: each one sealed by a configured key other than the sealing key is
// sealed again with the sealing key, so that when the old key is dropped
// every value still opens and a rotation fetches nothing. With one key
// configured it only samples, to find values no configured key opens (a
// wrong or missing key) and say so.

// resealScript replaces value ARGV[1] with ARGV[2], keeping its TTL, unless
// it changed meanwhile (a store or a Delete).
var resealScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return 1`)

// resealSample is how many values a pass looks at when there is nothing to
// re-seal: enough to notice a wrong key.
const resealSample = 200

// resealPass is what one pass found.
type resealPass struct {
	seen, resealed, unopenable int
	foreignIDs                 map[string]bool // ids of keys that opened nothing
}

// startReseal runs one pass in the background; c.resealed closes when it
// ends.
func (c *Cache) startReseal() {
	done := c.resealed
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		defer c.resealOnce.Do(func() { close(done) })
		c.reseal(c.life)
	}()
}

func (c *Cache) reseal(ctx context.Context) {
	p := resealPass{foreignIDs: map[string]bool{}}
	limit := resealSample
	if len(c.sealer.IDs()) > 1 {
		limit = -1 // every value
	}
	match := c.opts.Prefix + keyVersion + ":{*}:t:*"
	err := c.eachNode(ctx, func(ctx context.Context, node redis.UniversalClient) error {
		iter := node.Scan(ctx, 0, match, 500).Iterator()
		var batch []string
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == 500 {
				c.resealBatch(ctx, node, batch, &p)
				batch = batch[:0]
			}
			if limit >= 0 && p.seen+len(batch) >= limit {
				break
			}
		}
		c.resealBatch(ctx, node, batch, &p)
		return iter.Err()
	})
	if err != nil && ctx.Err() == nil {
		c.log.Warn("the pass over stored values stopped early", "error", redisFailure(err), "seen", p.seen, "resealed", p.resealed)
	}
	if p.resealed > 0 {
		c.log.Info("stored values sealed again with the sealing key", "key", c.sealer.SealingID(), "resealed", p.resealed, "seen", p.seen)
	}
	if p.unopenable > 0 {
		ids := make([]string, 0, len(p.foreignIDs))
		for id := range p.foreignIDs {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		c.log.Warn("stored values open with no configured encryption key: a key is missing or wrong; those tokens are fetched from Polyv again when asked for",
			"unopenable", p.unopenable, "seen", p.seen, "sealedUnder", strings.Join(ids, ","), "configured", strings.Join(c.sealer.IDs(), ","))
	}
}

// resealBatch reads names' values and seals again those under another key.
func (c *Cache) resealBatch(ctx context.Context, node redis.UniversalClient, names []string, p *resealPass) {
	if len(names) == 0 {
		return
	}
	pipe := node.Pipeline()
	gets := make([]*redis.StringCmd, len(names))
	for i, name := range names {
		gets[i] = pipe.Get(ctx, name)
	}
	_, _ = pipe.Exec(ctx)
	writes := node.Pipeline()
	for i, name := range names {
		raw, err := gets[i].Bytes()
		if err != nil || !seal.IsSealed(raw) {
			continue // gone, or a clear value of an instance without encryption
		}
		p.seen++
		plain, id, err := c.sealer.OpenBy(name, raw)
		if err != nil {
			p.unopenable++
			p.foreignIDs[id] = true
			c.metrics.unopenable.Inc()
			continue
		}
		if id != c.sealer.SealingID() && slices.Contains(c.sealer.IDs(), id) {
			resealScript.Eval(ctx, writes, []string{name}, raw, c.sealer.Seal(name, plain)) // in a pipeline, Run could not load it
		}
	}
	if writes.Len() == 0 {
		return
	}
	cmds, _ := writes.Exec(ctx)
	for _, cmd := range cmds {
		if n, err := cmd.(*redis.Cmd).Int(); err == nil && n == 1 {
			p.resealed++
			c.metrics.resealed.Inc()
		}
	}
}

// eachNode runs fn on every master of a Cluster, or on the one server.
func (c *Cache) eachNode(ctx context.Context, fn func(context.Context, redis.UniversalClient) error) error {
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, func(ctx context.Context, node *redis.Client) error { return fn(ctx, node) })
	}
	if u, ok := c.rdb.(redis.UniversalClient); ok {
		return fn(ctx, u)
	}
	return nil
}
