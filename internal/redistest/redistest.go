// Package redistest starts real redis-server processes on loopback ports for
// integration tests: a single server that a test can kill and restart, and a
// small Redis Cluster. Without redis-server on PATH the tests skip, except in
// CI (CI=true), where they fail.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/tokencache/tokencache/internal/redisconn"
)

// Server is a redis-server process.
type Server struct {
	Addr string
	port int
	dir  string
	args []string
	cmd  *exec.Cmd
}

// need skips tb when a binary is missing, or fails it in CI.
func need(tb testing.TB, bins ...string) {
	tb.Helper()
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("CI") != "" {
				tb.Fatalf("%s is not on PATH; CI must install it (.ci/run does)", bin)
			}
			tb.Skipf("%s is not on PATH", bin)
		}
	}
}

// Start starts a redis-server on a free loopback port and stops it at cleanup.
func Start(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	need(tb, "redis-server")
	port := freePort(tb)
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: tb.TempDir()}
	s.args = append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", s.dir}, extraArgs...)
	s.start(tb)
	tb.Cleanup(s.Kill)
	return s
}

func (s *Server) start(tb testing.TB) {
	tb.Helper()
	s.cmd = exec.Command("redis-server", s.args...)
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	waitPing(tb, s.Addr)
}

// Kill stops the server at once, as a crash would.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
		s.cmd = nil
	}
}

// StartTLS starts a redis-server that speaks only TLS, with certs' server
// certificate, and requires client certificates signed by certs' CA. It
// skips where redis-server was built without TLS, except in CI.
func StartTLS(tb testing.TB, caFile, certFile, keyFile string) *Server {
	tb.Helper()
	need(tb, "redis-server")
	port := freePort(tb)
	s := &Server{Addr: "127.0.0.1:" + strconv.Itoa(port), port: port, dir: tb.TempDir()}
	s.args = []string{"--port", "0", "--tls-port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--tls-cert-file", certFile, "--tls-key-file", keyFile, "--tls-ca-cert-file", caFile, "--tls-auth-clients", "yes"}
	s.cmd = exec.Command("redis-server", s.args...)
	out := &strings.Builder{}
	s.cmd.Stdout = out
	if err := s.cmd.Start(); err != nil {
		tb.Fatalf("start redis-server: %v", err)
	}
	tb.Cleanup(s.Kill)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c, err := net.Dial("tcp", s.Addr); err == nil {
			c.Close()
			return s
		}
		if s.cmd.ProcessState != nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if os.Getenv("CI") == "" && strings.Contains(out.String(), "TLS") {
		tb.Skipf("redis-server has no TLS support: %s", out.String())
	}
	tb.Fatalf("redis-server with TLS did not start:\n%s", out.String())
	return nil
}

// Killed reports whether the server is down.
func (s *Server) Killed() bool { return s.cmd == nil }

// Restart starts the server again on the same port, empty.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.Kill()
	s.start(tb)
}

// Client returns a client of the server, built as the server builds its own
// (redisconn.Open), closed at cleanup.
func (s *Server) Client(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	return clientOf(tb, s.Addr)
}

func clientOf(tb testing.TB, addr string) redis.UniversalClient {
	tb.Helper()
	c, err := redisconn.Open(redisconn.Options{URL: "redis://" + addr})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// StartCluster starts a Redis Cluster of n masters and no replicas, and
// returns a client of it, closed at cleanup.
func StartCluster(tb testing.TB, n int) *redis.ClusterClient {
	tb.Helper()
	need(tb, "redis-server", "redis-cli")
	addrs := make([]string, n)
	for i := range addrs {
		// The bus port is set, as port+10000 may not exist.
		s := Start(tb, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--enable-debug-command", "local", "--cluster-port", strconv.Itoa(freePort(tb)))
		addrs[i] = s.Addr
	}
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.Command("redis-cli", args...).CombinedOutput(); err != nil {
		tb.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs, DialTimeout: time.Second, ReadTimeout: time.Second,
		MaintNotificationsConfig: noMaint()})
	tb.Cleanup(func() { _ = c.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.ClusterInfo(context.Background()).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			// Every master must know the others before commands route well.
			if err := c.ForEachMaster(context.Background(), func(ctx context.Context, m *redis.Client) error {
				i, err := m.ClusterInfo(ctx).Result()
				if err != nil || !strings.Contains(i, "cluster_state:ok") {
					return fmt.Errorf("not ready")
				}
				return nil
			}); err == nil {
				return c
			}
		}
		if time.Now().After(deadline) {
			tb.Fatalf("cluster not ready: %v %s", err, info)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StartSentinel starts a Redis Sentinel that monitors master under the name
// "mymaster", and returns its address.
func StartSentinel(tb testing.TB, master *Server) string {
	tb.Helper()
	need(tb, "redis-server")
	port := freePort(tb)
	dir := tb.TempDir()
	conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsentinel monitor mymaster 127.0.0.1 %d 1\nsentinel down-after-milliseconds mymaster 5000\n",
		port, dir, master.port)
	path := dir + "/sentinel.conf"
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command("redis-server", path, "--sentinel")
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start sentinel: %v", err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := "127.0.0.1:" + strconv.Itoa(port)
	waitPing(tb, addr)
	return addr
}

func freePort(tb testing.TB) int {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitPing(tb testing.TB, addr string) {
	tb.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, MaintNotificationsConfig: noMaint()})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	// A reply, even NOAUTH from a server with a password, means it is up.
	var reply redis.Error
	for err := c.Ping(context.Background()).Err(); err != nil && !errors.As(err, &reply); err = c.Ping(context.Background()).Err() {
		if time.Now().After(deadline) {
			tb.Fatalf("redis-server at %s did not answer", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// noMaint turns off go-redis's maintenance notifications, which plain
// redis-server does not support.
func noMaint() *maintnotifications.Config {
	return &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

func init() {
	// go-redis logs every failed dial; tests that kill Redis make many.
	redis.SetLogger(quietLogger{})
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}
