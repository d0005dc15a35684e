package httpapi

import (
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/prometheus/client_golang/prometheus"
)

// The access-log modes (TOKENCACHE_ACCESS_LOG).
const (
	AccessLogErrors  = "errors"  // 4xx, 5xx and slow requests
	AccessLogSampled = "sampled" // those, and one in sampleEvery of the rest
	AccessLogAll     = "all"     // every request
)

// AccessLogModes lists the modes, for validation.
var AccessLogModes = []string{AccessLogErrors, AccessLogSampled, AccessLogAll}

const (
	sampleEvery   = 100
	slowRequest   = time.Second
	requestIDHead = echo.HeaderXRequestID
)

// observer is the one middleware that gives each request an id, counts it
// in the metrics and writes its access-log line: one wrapper, not three.
type observer struct {
	log     *slog.Logger
	mode    string
	metrics *requestMetrics
	quiet   *quietLog

	idPrefix string        // random per process
	idSeq    atomic.Uint64 // then a counter: unique, and cheap
	sampled  atomic.Uint64
}

func newObserver(log *slog.Logger, mode string, m *requestMetrics, quiet *quietLog) *observer {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return &observer{log: log, mode: mode, metrics: m, quiet: quiet, idPrefix: hex.EncodeToString(b) + "-"}
}

func (o *observer) middleware(next echo.HandlerFunc) echo.HandlerFunc {
	return func(ec echo.Context) error {
		start := time.Now()
		c := withRequestContext(ec)
		req, res := c.Request(), c.Response()
		id := req.Header.Get(requestIDHead)
		if id == "" {
			var buf [32]byte
			id = string(strconv.AppendUint(append(buf[:0], o.idPrefix...), o.idSeq.Add(1), 36))
		}
		res.Header().Set(requestIDHead, id)
		if err := next(c); err != nil {
			c.Error(err) // write the response now, so its status is known
		}
		latency := time.Since(start)
		route, status := routeLabel(c), res.Status
		key := "-"
		if k := apiKey(c); k != nil {
			key = k.Name
		}
		o.metrics.observe(route, status, key, latency)
		if o.logs(status, latency) && o.quiet.allow(req.Context(), "request", status) {
			o.log.LogAttrs(req.Context(), slog.LevelInfo, "request",
				slog.String("request_id", capped(id)), slog.String("method", req.Method),
				slog.String("route", route), slog.String("path", capped(req.URL.Path)),
				slog.Int("status", status), slog.Float64("latency_ms", float64(latency.Microseconds())/1000),
				slog.String("key", key), slog.String("cache_status", res.Header().Get("Cache-Status")))
		}
		return nil
	}
}

// logs decides whether a request gets an access-log line.
func (o *observer) logs(status int, latency time.Duration) bool {
	switch {
	case o.mode == AccessLogAll, status >= 400, latency >= slowRequest:
		return true
	case o.mode == AccessLogSampled:
		return o.sampled.Add(1)%sampleEvery == 0
	}
	return false
}

// requestMetrics count requests per route template, status and key name.
// The children are bound once per label set, not looked up per request.
type requestMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	counters bound[counterLabels, prometheus.Counter]
	timers   bound[string, prometheus.Observer] // by route
}

type counterLabels struct {
	route  string
	status int
	key    string
}

func newRequestMetrics(reg prometheus.Registerer) *requestMetrics {
	m := &requestMetrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokencache_requests_total", Help: "HTTP requests by route template, status and API key name.",
		}, []string{"route", "status", "key"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokencache_request_duration_seconds", Help: "HTTP request latency by route template.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"route"}),
	}
	reg.MustRegister(m.requests, m.duration)
	return m
}

func (m *requestMetrics) observe(route string, status int, key string, latency time.Duration) {
	m.counters.get(counterLabels{route, status, key}, func(l counterLabels) prometheus.Counter {
		return m.requests.WithLabelValues(l.route, strconv.Itoa(l.status), l.key)
	}).Inc()
	m.timers.get(route, func(route string) prometheus.Observer {
		return m.duration.WithLabelValues(route)
	}).Observe(latency.Seconds())
}

// bound keeps values made once per key. Reads load an immutable map and
// allocate nothing; a new key copies it, which is rare here: the label
// sets are routes × statuses × key names.
type bound[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

func (b *bound[K, V]) get(k K, newV func(K) V) V {
	if m := b.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	next := map[K]V{}
	if m := b.m.Load(); m != nil {
		if v, ok := (*m)[k]; ok {
			return v
		}
		maps.Copy(next, *m)
	}
	v := newV(k)
	next[k] = v
	b.m.Store(&next)
	return v
}
