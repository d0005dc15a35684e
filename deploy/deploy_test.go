// Package deploy holds the operations files (Prometheus alerts, a Grafana
// dashboard); its tests check them with the ecosystem's own parsers and
// against the metrics the service really exports.
package deploy

import (
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

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
			Type    string
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("tokencache.json is not JSON: %v", err)
	}
	names := exported(t)
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q queries nothing", p.Title)
		}
		for _, tg := range p.Targets {
			checkMetrics(t, "panel "+p.Title, tg.Expr, names)
		}
	}
}

// The Kubernetes manifests decode strictly into the API's own types, and
// hold what the README promises.
func TestKubernetesManifests(t *testing.T) {
	read := func(name string, into any) {
		t.Helper()
		b, err := os.ReadFile("kubernetes/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.UnmarshalStrict(b, into); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var d appsv1.Deployment
	read("deployment.yaml", &d)
	var svc corev1.Service
	read("service.yaml", &svc)
	var pdb policyv1.PodDisruptionBudget
	read("pdb.yaml", &pdb)
	var secret corev1.Secret
	read("secret.example.yaml", &secret)

	if d.Spec.Replicas == nil || *d.Spec.Replicas != 2 {
		t.Error("the Deployment does not run 2 replicas")
	}
	pod := d.Spec.Template.Spec
	if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot {
		t.Error("the pod may run as root")
	}
	c := pod.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.ReadOnlyRootFilesystem == nil || !*c.SecurityContext.ReadOnlyRootFilesystem {
		t.Error("the root filesystem is writable")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Error("probes are not on /readyz and /healthz")
	} else if c.ReadinessProbe.HTTPGet.Port.String() != "admin" || c.LivenessProbe.HTTPGet.Port.String() != "admin" {
		t.Error("probes are not on the admin port")
	}
	// The API is served over TLS, with a certificate from a TLS Secret.
	tlsMounted := false
	for _, v := range pod.Volumes {
		if v.Secret != nil && v.Secret.SecretName == "tokencache-tls" {
			tlsMounted = true
		}
	}
	if !tlsMounted {
		t.Error("no certificate is mounted from the tokencache-tls Secret")
	}
	if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Name != "https" || svc.Spec.Ports[0].TargetPort.String() != "https" {
		t.Errorf("the Service does not expose the API's https port alone: %v", svc.Spec.Ports)
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Error("no resource requests")
	}
	env := map[string]bool{}
	for _, e := range c.Env {
		env[e.Name] = true
		if e.Name == "GOMEMLIMIT" {
			// The server runs with GOGC=400: the soft limit keeps the heap
			// under the container's, with room for the runtime.
			soft, err := resource.ParseQuantity(strings.TrimSuffix(e.Value, "B"))
			if limit := c.Resources.Limits.Memory(); err != nil || limit.IsZero() || soft.Value() > limit.Value()*9/10 {
				t.Errorf("GOMEMLIMIT %s: want at most 90%% of the memory limit %v (%v)", e.Value, limit, err)
			}
		}
		if e.Value != "" && strings.Contains(strings.ToLower(e.Name), "secret") && !strings.HasSuffix(e.Name, "_FILE") {
			t.Errorf("%s is set in the manifest, not from the Secret", e.Name)
		}
	}
	for _, want := range []string{"POLYV_APP_SECRET_FILE", "TOKENCACHE_API_KEYS_FILE", "REDIS_URL", "TOKENCACHE_ADMIN_ADDR", "GOMEMLIMIT",
		"TOKENCACHE_ENCRYPTION_KEYS_FILE", "TOKENCACHE_TLS_CERT_FILE", "TOKENCACHE_TLS_KEY_FILE"} {
		if !env[want] {
			t.Errorf("the Deployment does not set %s", want)
		}
	}
	if !reflect.DeepEqual(pdb.Spec.Selector.MatchLabels, d.Spec.Selector.MatchLabels) || !reflect.DeepEqual(svc.Spec.Selector, d.Spec.Selector.MatchLabels) {
		t.Error("the Service or the PodDisruptionBudget selects other pods than the Deployment makes")
	}
}
