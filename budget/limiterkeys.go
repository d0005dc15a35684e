package budget

import (
	"context"
	"strings"

	"github.com/redis/go-redis/v9"
)

// limiterKeys keeps the rate limiter's keys under the scheduler's prefix:
// redis_rate puts "rate:" in front of every key, outside a prefix-scoped ACL.
type limiterKeys struct{ Redis }

func (l limiterKeys) strip(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = strings.TrimPrefix(k, "rate:")
	}
	return out
}

func (l limiterKeys) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return l.Redis.Eval(ctx, script, l.strip(keys), args...)
}

func (l limiterKeys) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return l.Redis.EvalSha(ctx, sha1, l.strip(keys), args...)
}

func (l limiterKeys) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return l.Redis.EvalRO(ctx, script, l.strip(keys), args...)
}

func (l limiterKeys) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return l.Redis.EvalShaRO(ctx, sha1, l.strip(keys), args...)
}
