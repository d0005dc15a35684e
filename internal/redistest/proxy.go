package redistest

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Proxy forwards TCP connections to a server. It can silence the
// connections open at a moment: they stay open, and what is sent on them is
// dropped, as when a host leaves the network without a reset. Connections
// opened later work.
type Proxy struct {
	Addr string

	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*proxied
	wg     sync.WaitGroup
}

type proxied struct {
	client, server net.Conn
	silent         atomic.Bool
}

// StartProxy forwards a loopback port to target until cleanup.
func StartProxy(tb testing.TB, target string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), ln: ln, target: target}
	p.wg.Add(1)
	go p.accept()
	tb.Cleanup(p.close)
	return p
}

// Client returns a client whose connections go through the proxy, built as
// Server.Client builds its own, closed at cleanup.
func (p *Proxy) Client(tb testing.TB) redis.UniversalClient {
	tb.Helper()
	return clientOf(tb, p.Addr)
}

// SilenceOpen silences every connection open now.
func (p *Proxy) SilenceOpen() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.silent.Store(true)
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.Dial("tcp", p.target)
		if err != nil {
			client.Close()
			continue
		}
		c := &proxied{client: client, server: server}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, client, server)
		go p.pipe(c, server, client)
	}
}

// pipe copies src to dst until either closes, dropping what c carries once
// silenced.
func (p *Proxy) pipe(c *proxied, src, dst net.Conn) {
	defer p.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				err = errors.Join(err, werr)
			}
		}
		if err != nil {
			c.client.Close()
			c.server.Close()
			return
		}
	}
}

func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.client.Close()
		c.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
