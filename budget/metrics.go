package budget

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the scheduler's Prometheus collectors.
type Metrics struct {
	depth         *prometheus.GaugeVec
	wait          *prometheus.GaugeVec
	refused       *prometheus.CounterVec
	abandoned     prometheus.Counter
	rateLimited   prometheus.Counter
	cooldownUntil prometheus.Gauge
}

// NewMetrics returns unregistered collectors, every series present from
// the start.
func NewMetrics() *Metrics {
	m := &Metrics{
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokencache_polyv_queue_depth", Help: "Fetches waiting on this instance for a slot of the fleet's Polyv budget, by class (host or viewer).",
		}, []string{"class"}),
		wait: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tokencache_polyv_queue_wait_seconds", Help: "Expected wait for a slot of a fetch queued now on this instance, by class.",
		}, []string{"class"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tokencache_polyv_budget_refused_total", Help: "Fetches refused with 503 because no Polyv call could be made in time, by reason: queue, cooldown, key_rate, bulk_share, delete_rate.",
		}, []string{"reason"}),
		abandoned: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokencache_polyv_queue_abandoned_total", Help: "Queued fetches whose callers all left: they never called Polyv.",
		}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tokencache_polyv_rate_limited_total", Help: "Polyv replies refusing a call for rate (qps exceeds): each starts or extends the fleet's cool-down.",
		}),
		cooldownUntil: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tokencache_polyv_cooldown_until_seconds", Help: "Unix time at which the fleet's latest Polyv cool-down, as this instance knows it, ends; in the past when none runs.",
		}),
	}
	for _, c := range []Class{ClassHost, ClassViewer} {
		m.depth.WithLabelValues(c.String())
		m.wait.WithLabelValues(c.String())
	}
	for _, r := range []Reason{ReasonQueue, ReasonCooldown, ReasonKeyRate, ReasonBulkShare, ReasonDeleteRate} {
		m.refused.WithLabelValues(string(r))
	}
	return m
}

// Collectors returns every collector, for prometheus.Registerer.MustRegister.
func (m *Metrics) Collectors() []prometheus.Collector {
	return []prometheus.Collector{m.depth, m.wait, m.refused, m.abandoned, m.rateLimited, m.cooldownUntil}
}
