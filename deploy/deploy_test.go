// Package deploy holds the operations files (Prometheus alerts, a Grafana
// dashboard); its tests check them with the ecosystem's own parsers and
// against the metrics the service really exports.
package deploy

import (
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/promql/parser"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/prometheus/model/rulefmt"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/httpapi"
)

// exported lists the metric names tokencache registers: the cache's from
// their descriptors (a vector with no samples yet counts too), the HTTP
// API's after one request through it.
func exported(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	ch := make(chan *prometheus.Desc, 100)
	for _, c := range cache.NewMetrics().Collectors() {
		c.Describe(ch)
	}
	close(ch)
	for d := range ch {
		if m := re.FindStringSubmatch(d.String()); m != nil {
			names[m[1]] = true
		}
	}
	reg := prometheus.NewRegistry()
	e := httpapi.New(httpapi.Options{Registry: reg})
	e.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("GET", "/healthz", nil))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	return names
}

var metricName = regexp.MustCompile(`tokencache_[a-z_]+`)

// checkMetrics fails for each metric expr names that tokencache does not export.
func checkMetrics(t *testing.T, where, expr string, names map[string]bool) {
	t.Helper()
	for _, m := range metricName.FindAllString(expr, -1) {
		base := m
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, suffix)
		}
		if !names[base] {
			t.Errorf("%s queries %s, which tokencache does not export", where, m)
		}
	}
}

func TestAlertRules(t *testing.T) {
	groups, errs := rulefmt.ParseFile("prometheus/alerts.yaml", false, model.UTF8Validation, parser.NewParser(parser.Options{}), slog.New(slog.DiscardHandler))
	if len(errs) > 0 {
		t.Fatalf("alerts.yaml: %v", errs)
	}
	names := exported(t)
	n := 0
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			n++
			checkMetrics(t, r.Alert, r.Expr, names)
		}
	}
	if n < 5 {
		t.Errorf("%d rules, want the README's suggested alerts", n)
	}
}

func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/tokencache.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("tokencache.json is not JSON: %v", err)
	}
	names := exported(t)
	for _, p := range dash.Panels {
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			checkMetrics(t, "panel "+p.Title, tg.Expr, names)
		}
	}
}
