package cache

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tokencache/tokencache/budget"
)

// Result says how a token was served.
type Result string

// The results, as used in the cache_results_total metric.
const (
	ResultHitLocal  Result = "hit_local" // from this process's memory
	ResultHitRedis  Result = "hit_redis" // from Redis
	ResultStale     Result = "stale"     // valid but old; a refresh was started
	ResultMiss      Result = "miss"      // fetched from Polyv for this request
	ResultCoalesced Result = "coalesced" // fetched by a concurrent request here or elsewhere
	ResultNegative  Result = "negative"  // a remembered Polyv rejection
	ResultError     Result = "error"     // no token
)

var allResults = []Result{ResultHitLocal, ResultHitRedis, ResultStale, ResultMiss, ResultCoalesced, ResultNegative, ResultError}

// Metrics are the cache's Prometheus collectors. Labels never hold a key or a
// token.
type Metrics struct {
	results          *prometheus.CounterVec
	upstreamRequests *prometheus.CounterVec
	upstreamDuration *prometheus.HistogramVec
	leaseWait        prometheus.Histogram
	redisErrors      prometheus.Counter
	redisCircuitOpen prometheus.Gauge
	refreshes        *prometheus.CounterVec
	unopenable       prometheus.Counter
	resealed         prometheus.Counter
	rateLimit        prometheus.Gauge
	bulkShare        prometheus.Gauge
	localDropped     prometheus.Counter
	pubsubSilent     prometheus.Counter

	budget *budget.Metrics

	// Children resolved once, so the hit path does no label lookup.
	byResult map[Result]prometheus.Counter
}

// NewMetrics returns unregistered collectors; register them with Collectors.
func NewMetrics() *Metrics {
	m := &Metrics{
		results: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokencache_cache_results_total", Help: "Token lookups by how they were served.",
		}, []string{"result"}),
		upstreamRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokencache_upstream_requests_total", Help: "Polyv calls made, by endpoint and outcome.",
		}, []string{"endpoint", "outcome"}),
		upstreamDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "tokencache_upstream_duration_seconds", Help: "Duration of Polyv calls, retries included.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20},
		}, []string{"endpoint"}),
		leaseWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tokencache_lease_wait_seconds", Help: "Time spent waiting for another instance's fetch.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokencache_redis_errors_total", Help: "Redis commands that failed (not counting misses).",
		}),
		redisCircuitOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokencache_redis_circuit_open", Help: "1 while the Redis circuit breaker is open or half-open.",
		}),
		refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokencache_refreshes_total", Help: "Background refreshes of stale tokens, by outcome.",
		}, []string{"outcome"}),
		unopenable: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokencache_undecryptable_values_total", Help: "Values in Redis no configured encryption key opened: read ones (each fetched again), ones found at start, and the fleet's name key.",
		}),
		resealed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokencache_values_resealed_total", Help: "Stored values sealed again with the sealing key at start, after a key rotation.",
		}),
		bulkShare: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokencache_polyv_bulk_share", Help: "The most of the Polyv rate that bulk items may use (TOKENCACHE_BULK_SHARE): bulk warms run at rate limit × bulk share.",
		}),
		rateLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokencache_polyv_rate_limit", Help: "The fleet-wide Polyv calls per second allowed (POLYV_RATE_LIMIT), to compare the call rate with.",
		}),
		localDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokencache_local_cache_dropped_total", Help: "Times the whole local cache was dropped: each time the pub/sub subscription was made again, since invalidations may have been lost meanwhile.",
		}),
		pubsubSilent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokencache_pubsub_silent_total", Help: fmt.Sprintf("Pub/sub connections replaced after %v with no message and no answer to a ping.", silentAfter),
		}),
		byResult: map[Result]prometheus.Counter{},
		budget:   budget.NewMetrics(),
	}
	for _, o := range []string{"ok", "failed"} {
		m.refreshes.WithLabelValues(o)
	}
	for _, r := range allResults {
		m.byResult[r] = m.results.WithLabelValues(string(r))
	}
	return m
}

// Collectors returns every collector, for prometheus.Registerer.MustRegister.
func (m *Metrics) Collectors() []prometheus.Collector {
	return append([]prometheus.Collector{m.results, m.upstreamRequests, m.upstreamDuration, m.leaseWait, m.redisErrors, m.redisCircuitOpen, m.refreshes, m.unopenable, m.resealed, m.rateLimit, m.bulkShare, m.localDropped, m.pubsubSilent}, m.budget.Collectors()...)
}

func (m *Metrics) result(r Result) { m.byResult[r].Inc() }
