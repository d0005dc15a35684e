// Package httpapi is tokencache's HTTP API on echo: routes, validation, auth,
// error mapping, metrics and the OpenAPI spec.
package httpapi

import (
	"context"
	_ "embed"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/tokencache/tokencache/cache"
)

// TokenCache is what the API needs from the cache.
type TokenCache interface {
	// Peek answers from memory, with ok false when Get must be called.
	Peek(k cache.Key) (cache.Token, cache.Result, bool, error)
	Get(ctx context.Context, k cache.Key) (cache.Token, cache.Result, error)
	Delete(ctx context.Context, k cache.Key) error
	Ready(ctx context.Context) error
	RedisCircuit() string
	PolyvState() string
}

var _ TokenCache = (*cache.Cache)(nil)

// OpenAPISpec is the API's OpenAPI 3 document, served at /openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPISpec []byte

// The defaults of Options' timeouts, for callers that restate them.
const (
	DefaultRequestTimeout = 10 * time.Second
	DefaultBulkTimeout    = 120 * time.Second
)

// Options configures the API. Zero fields take the defaults noted.
type Options struct {
	Cache TokenCache // required
	// Keys are the accepted API keys and their scopes; Store a new set to
	// reload them. With none, every /v1 request is refused, unless
	// AuthDisabled.
	Keys *Keys
	// APIKeys are unrestricted keys, used when Keys is nil.
	APIKeys []string
	// Auditor writes the audit trail; nil writes none.
	Auditor *Auditor
	// AuthDisabled lets /v1 requests through without a key.
	AuthDisabled bool
	// EmbeddedRedis is reported by /readyz.
	EmbeddedRedis bool
	// EncryptionOff is reported by /readyz: tokens are in clear in Redis.
	EncryptionOff bool
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registry receives the API's metrics and is served at /metrics; it
	// defaults to a new registry.
	Registry *prometheus.Registry
	// RequestTimeout bounds a single-token request; it defaults to
	// DefaultRequestTimeout.
	RequestTimeout time.Duration
	// BulkTimeout bounds a bulk request, which waits its turn at the rate
	// limit; it defaults to DefaultBulkTimeout.
	BulkTimeout time.Duration
	// BulkConcurrency bounds the items of one bulk request in flight; it
	// defaults to 16.
	BulkConcurrency int
	// MaxBodyBytes bounds request bodies; it defaults to 1 MiB.
	MaxBodyBytes int64
	// AdminElsewhere leaves /healthz, /readyz and /metrics out of New's
	// routes: NewAdmin serves them on their own listener.
	AdminElsewhere bool
	// AccessLog is which requests get an access-log line: AccessLogErrors
	// (the default: 4xx, 5xx and requests slower than 1s), AccessLogSampled
	// (those and 1 in 100 of the rest) or AccessLogAll.
	AccessLog string
	// Pprof serves net/http/pprof under /debug/pprof/ beside /metrics, for
	// profiling under load; keep it off unless the admin routes are private.
	Pprof bool
}

type server struct {
	opts    Options
	metrics *requestMetrics
}

// withDefaults fills in Options' defaults.
func withDefaults(opts Options) Options {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = DefaultRequestTimeout
	}
	if opts.BulkTimeout <= 0 {
		opts.BulkTimeout = DefaultBulkTimeout
	}
	if opts.BulkConcurrency <= 0 {
		opts.BulkConcurrency = 16
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = 1 << 20
	}
	if opts.Keys == nil {
		opts.Keys = NewKeys(KeysFromList(opts.APIKeys))
	}
	if opts.AccessLog == "" {
		opts.AccessLog = AccessLogErrors
	}
	return opts
}

// New returns the API as an echo instance, ready to Start or to serve.
func New(opts Options) *echo.Echo {
	opts = withDefaults(opts)
	s := &server{opts: opts, metrics: newRequestMetrics(opts.Registry)}
	opts.Registry.MustRegister(opts.Keys.collectors()...)

	quiet := newQuietLog(opts.Logger)
	e := newEcho(opts, quiet)
	e.Use(
		newObserver(opts.Logger, opts.AccessLog, s.metrics, quiet).middleware,
		middleware.RecoverWithConfig(middleware.RecoverConfig{DisablePrintStack: true, LogErrorFunc: func(c echo.Context, err error, _ []byte) error {
			return err
		}}),
	)
	if !opts.AdminElsewhere {
		s.adminRoutes(e, false) // pprof only ever on the admin listener
	}
	e.GET("/openapi.yaml", func(c echo.Context) error { return c.Blob(http.StatusOK, "application/yaml", OpenAPISpec) })

	// Routes, not a group, carry the auth: an echo group with middleware
	// answers a wrong method with 404 instead of 405. Each route's
	// middleware is applied here, once: given to echo, it would be applied
	// again on every request. Only the bulk route reads a body.
	e.GET("/v1/channels/:channelId/chat-token", wrap(s.getChatToken, s.auth(RouteGet)))
	e.DELETE("/v1/channels/:channelId/chat-token", wrap(s.deleteChatToken, s.auth(RouteDelete)))
	e.POST("/v1/channels/:channelId/chat-tokens", wrap(s.bulkChatTokens, s.auth(RouteBulk), middleware.BodyLimit(formatBytes(opts.MaxBodyBytes))))
	e.GET("/v1/channels/:channelId/token", wrap(s.getChannelToken, s.auth(RouteLegacy)))
	return e
}

// NewAdmin returns an echo instance serving only /healthz, /readyz and
// /metrics, for TOKENCACHE_ADMIN_ADDR; give it the Options given to New.
func NewAdmin(opts Options) *echo.Echo {
	opts = withDefaults(opts)
	s := &server{opts: opts}
	e := newEcho(opts, newQuietLog(opts.Logger))
	e.Use(middleware.Recover())
	s.adminRoutes(e, s.opts.Pprof)
	return e
}

// wrap puts h behind mw, the first outermost, as echo orders a route's
// middleware.
func wrap(h echo.HandlerFunc, mw ...echo.MiddlewareFunc) echo.HandlerFunc {
	for i := len(mw) - 1; i >= 0; i-- {
		h = mw[i](h)
	}
	return h
}

func newEcho(opts Options, quiet *quietLog) *echo.Echo {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(opts.Logger, quiet)
	return e
}

func (s *server) adminRoutes(e *echo.Echo, pprof bool) {
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	e.GET("/metrics", echo.WrapHandler(promhttp.HandlerFor(s.opts.Registry, promhttp.HandlerOpts{})))
	if pprof {
		e.GET("/debug/pprof/*", echo.WrapHandler(http.HandlerFunc(pprofHandler)))
	}
}

// pprofHandler serves net/http/pprof's pages by name.
func pprofHandler(w http.ResponseWriter, r *http.Request) {
	switch name := strings.TrimPrefix(r.URL.Path, "/debug/pprof/"); name {
	case "profile":
		pprof.Profile(w, r)
	case "trace":
		pprof.Trace(w, r)
	case "symbol":
		pprof.Symbol(w, r)
	case "cmdline":
		// The command line may hold secrets given as flags.
		http.NotFound(w, r)
	case "":
		pprof.Index(w, r)
	default:
		pprof.Handler(name).ServeHTTP(w, r)
	}
}

// maxLogged bounds what a client controls in a log line (path, request id),
// so that one request cannot write a megabyte into the log.
const maxLogged = 256

func capped(s string) string {
	if len(s) <= maxLogged {
		return s
	}
	return strings.ToValidUTF8(s[:maxLogged], "") + "…"
}

// formatBytes writes n as echo's BodyLimit wants it.
func formatBytes(n int64) string {
	// echo reads "M" and "K" as powers of 1000; "MiB" and "KiB" as of 1024.
	if n%(1<<20) == 0 {
		return strconv.FormatInt(n>>20, 10) + "MiB"
	}
	if n%(1<<10) == 0 {
		return strconv.FormatInt(n>>10, 10) + "KiB"
	}
	return strconv.FormatInt(n, 10)
}

// routeLabel is the route template of a request, never its raw path.
func routeLabel(c echo.Context) string {
	p := c.Path()
	if p == "" || strings.Contains(p, "*") {
		return "unmatched"
	}
	return p
}
