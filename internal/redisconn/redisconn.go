// Package redisconn builds the Redis client the server uses, from REDIS_URL,
// with the timeouts and retry policy the cache depends on. Tests build their
// clients here too, so that they exercise the same settings.
package redisconn

import (
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Options says where Redis is.
type Options struct {
	// URL is a redis:// or rediss:// URL. A URL with master_name= names a
	// Sentinel deployment.
	URL string
	// Cluster parses URL as a cluster URL (more nodes as addr= params).
	Cluster bool
}

// The defaults for settings the URL leaves unset. They are short, because
// the cache falls back to local state rather than wait for a sick Redis: a
// dead or stalled Redis may add a few hundred milliseconds to a request,
// never seconds.
const (
	DialTimeout = 250 * time.Millisecond
	IOTimeout   = 300 * time.Millisecond
	PoolTimeout = 600 * time.Millisecond
)

// tune applies the defaults to one client's settings. Commands are never
// retried and a failed dial is not tried again, because the circuit breaker
// and the local fallback handle a sick Redis better than a retry loop; and
// every command ends by the caller's deadline.
func tune(dial, read, write, pool *time.Duration, maxRetries, dialerRetries *int, contextTimeout *bool) {
	for _, d := range []struct {
		p *time.Duration
		v time.Duration
	}{{dial, DialTimeout}, {read, IOTimeout}, {write, IOTimeout}, {pool, PoolTimeout}} {
		if *d.p == 0 {
			*d.p = d.v
		}
	}
	if *maxRetries == 0 {
		*maxRetries = -1
	}
	*dialerRetries = 1
	*contextTimeout = true
}

// Open returns a client of the Redis that o names.
func Open(o Options) (redis.UniversalClient, error) {
	// Parse errors may quote the URL, password and all.
	urlErr := func(err error) error {
		return fmt.Errorf("REDIS_URL %s: %s", RedactURL(o.URL), strings.ReplaceAll(err.Error(), o.URL, RedactURL(o.URL)))
	}
	switch {
	case o.Cluster:
		co, err := redis.ParseClusterURL(o.URL)
		if err != nil {
			return nil, urlErr(err)
		}
		tune(&co.DialTimeout, &co.ReadTimeout, &co.WriteTimeout, &co.PoolTimeout, &co.MaxRetries, &co.DialerRetries, &co.ContextTimeoutEnabled)
		co.MaintNotificationsConfig = noMaint()
		return redis.NewClusterClient(co), nil
	case strings.Contains(o.URL, "master_name="):
		fo, err := redis.ParseFailoverURL(o.URL)
		if err != nil {
			return nil, urlErr(err)
		}
		tune(&fo.DialTimeout, &fo.ReadTimeout, &fo.WriteTimeout, &fo.PoolTimeout, &fo.MaxRetries, &fo.DialerRetries, &fo.ContextTimeoutEnabled)
		return redis.NewFailoverClient(fo), nil
	}
	so, err := redis.ParseURL(o.URL)
	if err != nil {
		return nil, urlErr(err)
	}
	tune(&so.DialTimeout, &so.ReadTimeout, &so.WriteTimeout, &so.PoolTimeout, &so.MaxRetries, &so.DialerRetries, &so.ContextTimeoutEnabled)
	so.MaintNotificationsConfig = noMaint()
	return redis.NewClient(so), nil
}

// noMaint turns off go-redis's maintenance notifications, which open-source
// redis-server does not support.
func noMaint() *maintnotifications.Config {
	return &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

// RedactURL drops the password of a Redis URL.
func RedactURL(u string) string {
	if u == "" {
		return "embedded"
	}
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return "[unparseable]"
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = "[redacted]@" + rest[at+1:]
	}
	return scheme + "://" + rest
}
