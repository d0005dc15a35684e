// Package redisconn builds the Redis client the server uses, from REDIS_URL,
// with the timeouts and retry policy the cache depends on. Tests build their
// clients here too, so that they exercise the same settings.
package redisconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
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
	// TLSCAFile is the CA (PEM) that signed the server's certificate, for a
	// rediss:// URL; empty trusts the system's roots.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are a client certificate (PEM), for servers
	// that require one.
	TLSCertFile, TLSKeyFile string
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

// tune applies the defaults to one client's settings. Commands are not
// retried and a failed dial is not tried again, because the circuit breaker
// and the local fallback handle a sick Redis better than a retry loop; and
// every command ends by the caller's deadline. (A Cluster client retries a
// timed-out command on its own whatever MaxRetries says: oneTimeout stops
// that.)
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
	// Parse errors may quote the URL, or a piece of the password where a
	// '?', '#' or '/' in it cut the URL short: such an error is never shown.
	urlErr := func(err error) error {
		msg := strings.ReplaceAll(err.Error(), o.URL, RedactURL(o.URL))
		if secret := userinfo(o.URL); secret != "" && leaks(msg, secret) {
			msg = "not a valid URL; percent-encode any ?, #, / or @ in the user name or password"
		}
		return fmt.Errorf("REDIS_URL %s: %s", RedactURL(o.URL), msg)
	}
	tlsConfig := func(tc **tls.Config) error {
		if *tc == nil {
			if o.TLSCAFile != "" || o.TLSCertFile != "" {
				return errors.New("REDIS_TLS_* settings need a rediss:// URL")
			}
			return nil
		}
		return o.applyTLS(*tc)
	}
	switch {
	case o.Cluster:
		co, err := redis.ParseClusterURL(o.URL)
		if err != nil {
			return nil, urlErr(err)
		}
		tune(&co.DialTimeout, &co.ReadTimeout, &co.WriteTimeout, &co.PoolTimeout, &co.MaxRetries, &co.DialerRetries, &co.ContextTimeoutEnabled)
		if err := tlsConfig(&co.TLSConfig); err != nil {
			return nil, err
		}
		co.MaintNotificationsConfig = noMaint()
		c := redis.NewClusterClient(co)
		c.AddHook(oneTimeout{})
		c.OnNewNode(func(node *redis.Client) { node.AddHook(oneTimeout{}) })
		return c, nil
	case strings.Contains(o.URL, "master_name="):
		fo, err := redis.ParseFailoverURL(o.URL)
		if err != nil {
			return nil, urlErr(err)
		}
		tune(&fo.DialTimeout, &fo.ReadTimeout, &fo.WriteTimeout, &fo.PoolTimeout, &fo.MaxRetries, &fo.DialerRetries, &fo.ContextTimeoutEnabled)
		if err := tlsConfig(&fo.TLSConfig); err != nil {
			return nil, err
		}
		return redis.NewFailoverClient(fo), nil
	}
	so, err := redis.ParseURL(o.URL)
	if err != nil {
		return nil, urlErr(err)
	}
	tune(&so.DialTimeout, &so.ReadTimeout, &so.WriteTimeout, &so.PoolTimeout, &so.MaxRetries, &so.DialerRetries, &so.ContextTimeoutEnabled)
	if err := tlsConfig(&so.TLSConfig); err != nil {
		return nil, err
	}
	so.MaintNotificationsConfig = noMaint()
	return redis.NewClient(so), nil
}

// applyTLS adds the private CA and the client certificate to tc, and
// requires TLS 1.2 or later.
func (o Options) applyTLS(tc *tls.Config) error {
	tc.MinVersion = max(tc.MinVersion, tls.VersionTLS12)
	if o.TLSCAFile != "" {
		b, err := os.ReadFile(o.TLSCAFile)
		if err != nil {
			return fmt.Errorf("REDIS_TLS_CA_FILE: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return fmt.Errorf("REDIS_TLS_CA_FILE: %s holds no PEM certificate", o.TLSCAFile)
		}
		tc.RootCAs = pool
	}
	if o.TLSCertFile != "" || o.TLSKeyFile != "" {
		pair, err := tls.LoadX509KeyPair(o.TLSCertFile, o.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return nil
}

// noMaint turns off go-redis's maintenance notifications, which open-source
// redis-server does not support.
func noMaint() *maintnotifications.Config {
	return &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

// userinfo is what lies between a URL's "://" and its last '@'.
func userinfo(u string) string {
	_, rest, ok := strings.Cut(u, "://")
	if !ok {
		return ""
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		return rest[:at]
	}
	return ""
}

// leaks reports whether msg holds any three characters in a row of secret.
func leaks(msg, secret string) bool {
	if len(secret) < 3 {
		return strings.Contains(msg, secret)
	}
	for i := 0; i+3 <= len(secret); i++ {
		if strings.Contains(msg, secret[i:i+3]) {
			return true
		}
	}
	return false
}

// RedactURL hides the secrets of a URL: user info, and every query
// parameter whose name holds "password" (Sentinel's password= and
// sentinel_password=).
func RedactURL(u string) string {
	if u == "" {
		return "embedded"
	}
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return "[unparseable]"
	}
	// The user info runs to the last '@', whatever it holds.
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = "[redacted]@" + rest[at+1:]
	}
	rest, query, hasQuery := strings.Cut(rest, "?")
	if hasQuery {
		params := strings.Split(query, "&")
		for i, p := range params {
			if name, _, ok := strings.Cut(p, "="); ok && strings.Contains(strings.ToLower(name), "password") {
				params[i] = name + "=[redacted]"
			}
		}
		rest += "?" + strings.Join(params, "&")
	}
	return scheme + "://" + rest
}

// oneTimeout keeps a Cluster command to one attempt once an attempt has
// timed out: go-redis's ClusterClient retries a timed-out command on new
// connections up to MaxRedirects times, so a stalled node would hold the
// caller for seconds. MOVED and ASK redirects, which are no timeouts, still
// follow. The cluster-level hook gives each command a record of its
// attempts; the node-level hook, on every attempt, refuses a new one after
// a timeout with that timeout's error.
type oneTimeout struct{}

type attemptsKey struct{}

// attempts is one command's record: the timeout that ended an attempt. A
// pipeline's attempts on several nodes run at once.
type attempts struct {
	mu       sync.Mutex
	timedOut error
}

func (oneTimeout) DialHook(next redis.DialHook) redis.DialHook { return next }

func (oneTimeout) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		return oneAttempt(ctx, func(ctx context.Context) error { return next(ctx, cmd) })
	}
}

func (oneTimeout) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		return oneAttempt(ctx, func(ctx context.Context) error { return next(ctx, cmds) })
	}
}

// oneAttempt runs at the cluster level (no record in ctx yet: it adds one)
// and again for each node attempt (it checks and fills the record).
func oneAttempt(ctx context.Context, run func(context.Context) error) error {
	a, ok := ctx.Value(attemptsKey{}).(*attempts)
	if !ok {
		return run(context.WithValue(ctx, attemptsKey{}, &attempts{}))
	}
	a.mu.Lock()
	timedOut := a.timedOut
	a.mu.Unlock()
	if timedOut != nil {
		return timedOut
	}
	err := run(ctx)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		a.mu.Lock()
		a.timedOut = err
		a.mu.Unlock()
	}
	return err
}
