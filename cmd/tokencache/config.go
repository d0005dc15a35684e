package main

import (
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/tokencache/tokencache/internal/cli"

	"github.com/tokencache/tokencache/cache"
	"github.com/tokencache/tokencache/httpapi"
	"github.com/tokencache/tokencache/internal/redisconn"
	"github.com/tokencache/tokencache/polyv"
)

// Config is the server's whole configuration. Every field has an
// environment variable and a flag; see settings.
type Config struct {
	Addr           string
	AppID          string
	AppSecret      polyv.Secret
	AppSecretFile  string
	BaseURL        string
	PolyvTimeout   time.Duration
	RateLimit      int
	Cooldown       time.Duration
	DeleteRate     int
	SignMethod     string
	RedisURL       string
	RedisCluster   bool
	APIKeys        []string
	APIKeysFile    string
	Keys           *httpapi.KeySet // from APIKeys and APIKeysFile
	BulkShare      float64
	EncKeysRaw     polyv.Secret
	EncKeysFile    string
	EncryptionKeys []cache.EncryptionKey // from EncKeysRaw or EncKeysFile
	Encryption     string                // "off" turns encryption at rest off on purpose
	TLSCertFile    string
	TLSKeyFile     string
	TLSClientCA    string
	AdminAddr      string
	Pprof          bool
	AccessLog      string
	CheckPolyv     bool
	RedisTLSCA     string
	RedisTLSCert   string
	RedisTLSKey    string
	Auth           string
	TTL            time.Duration
	RefreshAfter   time.Duration
	NegativeTTL    time.Duration
	LocalSize      int
	KeyPrefix      string
	LogLevel       string
	LogFormat      string
	Demo           bool
	ShutdownPeriod time.Duration
	Warnings       []string // what start-up logs as WARN
}

// setting binds one environment variable and its flag to a Config field.
type setting struct {
	env   string
	def   string
	help  string
	value flag.Value
}

// flagName derives a setting's flag from its variable: TOKENCACHE_TTL is -ttl,
// POLYV_APP_ID is -polyv-app-id.
func (s setting) flagName() string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.env, "TOKENCACHE_")), "_", "-")
}

// settings lists every setting with its default, in one place.
func (c *Config) settings() []setting {
	return []setting{
		{"TOKENCACHE_ADDR", ":8080", "listen address", (*stringValue)(&c.Addr)},
		{"POLYV_APP_ID", "", "Polyv appId (required unless -demo)", (*stringValue)(&c.AppID)},
		{"POLYV_APP_SECRET", "", "Polyv appSecret (required unless -demo; or use POLYV_APP_SECRET_FILE)", (*secretValue)(&c.AppSecret)},
		{"POLYV_APP_SECRET_FILE", "", "file holding the Polyv appSecret", (*stringValue)(&c.AppSecretFile)},
		{"POLYV_BASE_URL", polyv.DefaultBaseURL, "Polyv API base URL", (*stringValue)(&c.BaseURL)},
		{"POLYV_TIMEOUT", shortDuration(polyv.DefaultTimeout), "timeout of each Polyv attempt", (*durationValue)(&c.PolyvTimeout)},
		{"POLYV_RATE_LIMIT", fmt.Sprint(cache.DefaultRateLimit), "fleet-wide Polyv requests per second", (*intValue)(&c.RateLimit)},
		{"POLYV_COOLDOWN", shortDuration(cache.DefaultCooldown), "fleet-wide pause of Polyv calls after Polyv's rate-limit reply, doubled while the probe at its end is refused, at most 5m", (*durationValue)(&c.Cooldown)},
		{"POLYV_SIGN_METHOD", string(polyv.DefaultSignMethod), "Polyv signature method: MD5 or SHA256", (*stringValue)(&c.SignMethod)},
		{"REDIS_URL", "", "redis:// or rediss:// URL of the Redis the fleet shares (required unless -demo)", (*stringValue)(&c.RedisURL)},
		{"REDIS_CLUSTER", "false", "parse REDIS_URL as a cluster URL (more nodes as addr= params)", (*boolValue)(&c.RedisCluster)},
		{"TOKENCACHE_API_KEYS", "", "comma-separated bearer API keys (or use TOKENCACHE_API_KEYS_FILE)", (*listValue)(&c.APIKeys)},
		{"TOKENCACHE_API_KEYS_FILE", "", "YAML file of named, scoped API keys; reloaded on SIGHUP and when it changes", (*stringValue)(&c.APIKeysFile)},
		{"TOKENCACHE_AUTH", "", "set to none to turn API-key auth off on purpose", (*stringValue)(&c.Auth)},
		{"TOKENCACHE_BULK_SHARE", fmt.Sprint(cache.DefaultBulkShare), "the most of POLYV_RATE_LIMIT that bulk items may use, above 0 and at most 1", (*floatValue)(&c.BulkShare)},
		{"TOKENCACHE_DELETE_RATE", fmt.Sprint(cache.DefaultDeleteRate), "DELETEs per second each API key may make, fleet-wide (each forces a refetch)", (*intValue)(&c.DeleteRate)},
		{"TOKENCACHE_ENCRYPTION_KEYS", "", "comma-separated id:base64 32-byte keys sealing tokens at rest; the first seals, all open", (*secretValue)(&c.EncKeysRaw)},
		{"TOKENCACHE_ENCRYPTION_KEYS_FILE", "", "file holding TOKENCACHE_ENCRYPTION_KEYS", (*stringValue)(&c.EncKeysFile)},
		{"TOKENCACHE_ENCRYPTION", "", "set to off to keep tokens in clear in Redis on purpose; otherwise encryption keys are required (unless -demo)", (*stringValue)(&c.Encryption)},
		{"TOKENCACHE_TLS_CERT_FILE", "", "certificate (PEM) to serve HTTPS on TOKENCACHE_ADDR; reloaded when it changes", (*stringValue)(&c.TLSCertFile)},
		{"TOKENCACHE_TLS_KEY_FILE", "", "private key (PEM) of TOKENCACHE_TLS_CERT_FILE", (*stringValue)(&c.TLSKeyFile)},
		{"TOKENCACHE_TLS_CLIENT_CA_FILE", "", "CA (PEM) whose client certificates are required (mTLS)", (*stringValue)(&c.TLSClientCA)},
		{"TOKENCACHE_ADMIN_ADDR", "", "serve /healthz, /readyz and /metrics here only", (*stringValue)(&c.AdminAddr)},
		{"TOKENCACHE_CHECK_POLYV", "false", "sign one get-token call at start and refuse to start if Polyv rejects the credentials", (*boolValue)(&c.CheckPolyv)},
		{"TOKENCACHE_PPROF", "false", "serve net/http/pprof under /debug/pprof/ on the admin listener (needs TOKENCACHE_ADMIN_ADDR; never /debug/pprof/cmdline, which would show secrets given as flags)", (*boolValue)(&c.Pprof)},
		{"REDIS_TLS_CA_FILE", "", "CA (PEM) that signed Redis's certificate, for rediss://", (*stringValue)(&c.RedisTLSCA)},
		{"REDIS_TLS_CERT_FILE", "", "client certificate (PEM) for Redis", (*stringValue)(&c.RedisTLSCert)},
		{"REDIS_TLS_KEY_FILE", "", "client private key (PEM) for Redis", (*stringValue)(&c.RedisTLSKey)},
		{"TOKENCACHE_TTL", shortDuration(cache.DefaultTTL), "how long a token is cached; must be under 6h", (*durationValue)(&c.TTL)},
		{"TOKENCACHE_REFRESH_AFTER", shortDuration(cache.DefaultRefreshAfter), "token age from which hits refresh it in the background", (*durationValue)(&c.RefreshAfter)},
		{"TOKENCACHE_NEGATIVE_TTL", shortDuration(cache.DefaultNegativeTTL), "how long a Polyv rejection is remembered", (*durationValue)(&c.NegativeTTL)},
		{"TOKENCACHE_LOCAL_SIZE", fmt.Sprint(cache.DefaultLocalSize), "local cache entries (0 turns it off)", (*intValue)(&c.LocalSize)},
		{"TOKENCACHE_KEY_PREFIX", cache.DefaultPrefix, "Redis key prefix", (*stringValue)(&c.KeyPrefix)},
		{"TOKENCACHE_LOG_LEVEL", "info", "debug, info, warn or error", (*stringValue)(&c.LogLevel)},
		{"TOKENCACHE_LOG_FORMAT", "json", "json or text", (*stringValue)(&c.LogFormat)},
		{"TOKENCACHE_ACCESS_LOG", "errors", "which requests are logged: errors (4xx, 5xx, slower than 1s), sampled (and 1 in 100 of the rest) or all", (*stringValue)(&c.AccessLog)},
		{"TOKENCACHE_SHUTDOWN_PERIOD", "20s", "how long in-flight requests may take to finish at shutdown", (*durationValue)(&c.ShutdownPeriod)},
	}
}

const usage = `usage: tokencache [flags]
       tokencache healthcheck [-addr host:port]

Serves Polyv chat tokens from a Redis-backed cache. Every flag also has an
environment variable, named in its help; -demo runs with no Polyv account
and no Redis.`

// shortDuration is d as a setting's default is written: 5h45m, not 5h45m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// cacheOptions are the cache's options that come from the configuration.
func (c *Config) cacheOptions() cache.Options {
	return cache.Options{
		Prefix: c.KeyPrefix, TTL: c.TTL, RefreshAfter: c.RefreshAfter, NegativeTTL: c.NegativeTTL,
		LocalSize: c.LocalSize, RateLimit: c.RateLimit, BulkShare: c.BulkShare, EncryptionKeys: c.EncryptionKeys,
		Cooldown: c.Cooldown, DeleteRate: c.DeleteRate,
		FillTimeout: 3*max(c.PolyvTimeout, 0) + time.Second, // every attempt, and then some; POLYV_TIMEOUT has its own check
	}
}

// cacheOptionSettings names the setting behind each cache option.
var cacheOptionSettings = map[string]string{
	"Prefix": "TOKENCACHE_KEY_PREFIX", "TTL": "TOKENCACHE_TTL", "RefreshAfter": "TOKENCACHE_REFRESH_AFTER",
	"NegativeTTL": "TOKENCACHE_NEGATIVE_TTL", "LocalSize": "TOKENCACHE_LOCAL_SIZE", "RateLimit": "POLYV_RATE_LIMIT",
	"BulkShare": "TOKENCACHE_BULK_SHARE", "Cooldown": "POLYV_COOLDOWN", "DeleteRate": "TOKENCACHE_DELETE_RATE",
}

// cacheProblems words cache.Options.Validate's findings as settings: the
// rules live in the cache.
func cacheProblems(err error) []string {
	if err == nil {
		return nil
	}
	errs := []error{err}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		errs = joined.Unwrap()
	}
	var p []string
	for _, e := range errs {
		var oe *cache.OptionError
		if errors.As(e, &oe) && cacheOptionSettings[oe.Option] != "" {
			v := oe.Value
			if d, ok := v.(time.Duration); ok {
				v = shortDuration(d) // as a setting is written: 7h, not 7h0m0s
			}
			p = append(p, fmt.Sprintf("%s=%v: %s", cacheOptionSettings[oe.Option], v, oe.Rule))
		} else {
			p = append(p, e.Error())
		}
	}
	return p
}

// loadConfig reads the environment, then the flags, then secret files, and
// validates. The error lists every problem, one per line.
func loadConfig(args []string, getenv func(string) string, stdout io.Writer) (Config, error) {
	var c Config
	var problems []string
	fs := flag.NewFlagSet("tokencache", flag.ContinueOnError)
	for _, s := range c.settings() {
		// The flag is registered at the built-in default, so that usage
		// never shows a value from the environment, where secrets live.
		_ = s.value.Set(s.def)
		fs.Var(s.value, s.flagName(), s.help+" (env "+s.env+")")
		if e := getenv(s.env); e != "" {
			if err := s.value.Set(e); err != nil {
				problems = append(problems, fmt.Sprintf("%s: %v", s.env, err))
			}
		}
	}
	fs.BoolVar(&c.Demo, "demo", false, "start an in-process Polyv simulator and embedded Redis, with generated credentials")
	if err := cli.Parse(fs, args, stdout, usage); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		problems = append(problems, fmt.Sprintf("unexpected arguments: %q", fs.Args()))
	}
	// A secret given as a flag shows in ps and in /proc to every local user.
	fs.Visit(func(f *flag.Flag) {
		for _, s := range c.settings() {
			if s.flagName() == f.Name {
				if _, secret := s.value.(*secretValue); secret || s.env == "TOKENCACHE_API_KEYS" {
					c.Warnings = append(c.Warnings, fmt.Sprintf("-%s was given on the command line, where other local users can read it; use %s_FILE or the environment", f.Name, s.env))
				}
			}
		}
	})
	problems = append(problems, c.readFiles()...)
	problems = append(problems, c.validate()...)
	if len(problems) > 0 {
		return c, errors.New(strings.Join(byFlag(problems, fs, c.settings()), "\n"))
	}
	return c, nil
}

// byFlag names, in each problem, a setting given as a flag by that flag:
// "-ttl=7h: ..." for -ttl 7h, where the environment's reads "TOKENCACHE_TTL=7h".
func byFlag(problems []string, fs *flag.FlagSet, settings []setting) []string {
	fs.Visit(func(f *flag.Flag) {
		for _, s := range settings {
			if s.flagName() != f.Name {
				continue
			}
			for i, p := range problems {
				for _, sep := range []string{"=", ":"} {
					if strings.HasPrefix(p, s.env+sep) {
						problems[i] = "-" + f.Name + strings.TrimPrefix(p, s.env)
					}
				}
			}
		}
	})
	return problems
}

// readFiles loads the secret and the API keys from their files, if set.
// A setting given both directly and as a file is a problem: taking either
// silently would let a leftover outlive a rotation.
func (c *Config) readFiles() []string {
	var problems []string
	for _, pair := range []struct {
		name         string
		direct, file bool
	}{
		{"POLYV_APP_SECRET", c.AppSecret.Reveal() != "", c.AppSecretFile != ""},
		{"TOKENCACHE_API_KEYS", len(c.APIKeys) > 0, c.APIKeysFile != ""},
		{"TOKENCACHE_ENCRYPTION_KEYS", c.EncKeysRaw.Reveal() != "", c.EncKeysFile != ""},
	} {
		if pair.direct && pair.file {
			problems = append(problems, fmt.Sprintf("%s and %s_FILE are both set; set one", pair.name, pair.name))
		}
	}
	if len(problems) > 0 {
		return problems
	}
	if c.AppSecretFile != "" {
		b, err := os.ReadFile(c.AppSecretFile)
		if err != nil {
			problems = append(problems, fmt.Sprintf("POLYV_APP_SECRET_FILE: %v", err))
		} else {
			c.AppSecret = polyv.Secret(strings.TrimSpace(string(b)))
		}
	}
	if c.EncKeysFile != "" {
		b, err := os.ReadFile(c.EncKeysFile)
		if err != nil {
			problems = append(problems, fmt.Sprintf("TOKENCACHE_ENCRYPTION_KEYS_FILE: %v", err))
		} else {
			c.EncKeysRaw = polyv.Secret(strings.TrimSpace(string(b)))
		}
	}
	if c.EncKeysRaw.Reveal() != "" {
		var err error
		if c.EncryptionKeys, err = parseEncryptionKeys(c.EncKeysRaw.Reveal()); err != nil {
			problems = append(problems, prefixLines("TOKENCACHE_ENCRYPTION_KEYS: ", err.Error())...)
		}
	}
	c.Keys = httpapi.KeysFromList(c.APIKeys)
	if c.APIKeysFile != "" {
		fileKeys, err := readKeysFile(c.APIKeysFile)
		if err == nil {
			c.Keys, err = c.Keys.Join(fileKeys)
		}
		if info, statErr := os.Stat(c.APIKeysFile); err == nil && statErr == nil && info.Mode().Perm()&0o077 != 0 && fileKeys.HoldsPlaintext() {
			c.Warnings = append(c.Warnings, fmt.Sprintf("TOKENCACHE_API_KEYS_FILE %s holds keys in plaintext (key:) and other users can read it (mode %#o): chmod 600 it, or give sha256: digests instead", c.APIKeysFile, info.Mode().Perm()))
		}
		if err != nil {
			problems = append(problems, prefixLines("TOKENCACHE_API_KEYS_FILE: ", err.Error())...)
		}
	}
	return problems
}

func (c *Config) validate() []string {
	var p []string
	if !c.Demo {
		if strings.TrimSpace(c.AppID) == "" {
			p = append(p, "POLYV_APP_ID is required (or run with -demo)")
		}
		if strings.TrimSpace(c.AppSecret.Reveal()) == "" {
			p = append(p, "POLYV_APP_SECRET or POLYV_APP_SECRET_FILE is required (or run with -demo)")
		}
		if c.Keys.Len() == 0 && c.APIKeysFile == "" && c.Auth != "none" {
			p = append(p, "TOKENCACHE_API_KEYS or TOKENCACHE_API_KEYS_FILE is required; set TOKENCACHE_AUTH=none to turn auth off on purpose")
		}
		if c.RedisURL == "" {
			p = append(p, "REDIS_URL is required: the Redis the fleet shares (or run with -demo for an embedded one)")
		}
		if !c.encrypting() && c.Encryption != "off" {
			p = append(p, "TOKENCACHE_ENCRYPTION_KEYS or TOKENCACHE_ENCRYPTION_KEYS_FILE is required (tokens are sealed in Redis); set TOKENCACHE_ENCRYPTION=off to keep them in clear on purpose")
		}
	}
	switch {
	case c.Encryption != "" && c.Encryption != "off":
		p = append(p, fmt.Sprintf("TOKENCACHE_ENCRYPTION=%q: the only value is off", c.Encryption))
	case c.Encryption == "off" && c.encrypting():
		p = append(p, "TOKENCACHE_ENCRYPTION=off turns encryption off, yet encryption keys are configured: drop one or the other")
	}
	if c.Pprof && c.AdminAddr == "" {
		p = append(p, "TOKENCACHE_PPROF needs TOKENCACHE_ADMIN_ADDR: pprof is served only on the admin listener, never beside the API")
	}
	if c.Auth == "none" && (len(c.APIKeys) > 0 || c.APIKeysFile != "") {
		p = append(p, "TOKENCACHE_AUTH=none turns auth off, yet API keys are configured: drop one or the other")
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		p = append(p, "TOKENCACHE_TLS_CERT_FILE and TOKENCACHE_TLS_KEY_FILE go together")
	}
	if c.TLSClientCA != "" && c.TLSCertFile == "" {
		p = append(p, "TOKENCACHE_TLS_CLIENT_CA_FILE needs TOKENCACHE_TLS_CERT_FILE and TOKENCACHE_TLS_KEY_FILE")
	}
	if (c.RedisTLSCert == "") != (c.RedisTLSKey == "") {
		p = append(p, "REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together")
	}
	if (c.RedisTLSCA != "" || c.RedisTLSCert != "") && !strings.HasPrefix(c.RedisURL, "rediss://") {
		p = append(p, "REDIS_TLS_* need a rediss:// REDIS_URL")
	}
	if c.Auth != "" && c.Auth != "none" {
		p = append(p, fmt.Sprintf("TOKENCACHE_AUTH=%q: the only value is none", c.Auth))
	}
	if !polyv.ValidBaseURL(c.BaseURL) {
		p = append(p, fmt.Sprintf("POLYV_BASE_URL=%q: must start with https:// or http://", redisconn.RedactURL(c.BaseURL)))
	}
	if c.PolyvTimeout <= 0 {
		p = append(p, "POLYV_TIMEOUT must be positive")
	}
	if !polyv.SignMethod(c.SignMethod).Valid() {
		p = append(p, fmt.Sprintf("POLYV_SIGN_METHOD=%q: must be MD5 or SHA256", c.SignMethod))
	}
	if c.RedisURL != "" && !strings.HasPrefix(c.RedisURL, "redis://") && !strings.HasPrefix(c.RedisURL, "rediss://") {
		p = append(p, "REDIS_URL must start with redis:// or rediss://")
	}
	if c.RedisCluster && c.RedisURL == "" {
		p = append(p, "REDIS_CLUSTER=true needs REDIS_URL")
	}
	p = append(p, cacheProblems(c.cacheOptions().Validate())...)
	if _, err := parseLevel(c.LogLevel); err != nil {
		p = append(p, fmt.Sprintf("TOKENCACHE_LOG_LEVEL=%q: must be debug, info, warn or error", c.LogLevel))
	}
	if c.AdminAddr != "" && sameListenAddr(c.Addr, c.AdminAddr) {
		p = append(p, fmt.Sprintf("TOKENCACHE_ADMIN_ADDR=%s and TOKENCACHE_ADDR=%s are the same address: give the admin listener a port of its own", c.AdminAddr, c.Addr))
	}
	if !slices.Contains(httpapi.AccessLogModes, c.AccessLog) {
		p = append(p, fmt.Sprintf("TOKENCACHE_ACCESS_LOG=%q: must be errors, sampled or all", c.AccessLog))
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		p = append(p, fmt.Sprintf("TOKENCACHE_LOG_FORMAT=%q: must be json or text", c.LogFormat))
	}
	if c.ShutdownPeriod <= 0 {
		p = append(p, "TOKENCACHE_SHUTDOWN_PERIOD must be positive")
	}
	return p
}

// sameListenAddr reports whether listening on a and b would clash: one port,
// and one host or a wildcard host.
func sameListenAddr(a, b string) bool {
	ha, pa, errA := net.SplitHostPort(a)
	hb, pb, errB := net.SplitHostPort(b)
	if errA != nil || errB != nil {
		return a == b
	}
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return pa == pb && pa != "0" && (ha == hb || wild(ha) || wild(hb))
}

// encrypting reports whether encryption keys are configured.
func (c *Config) encrypting() bool {
	return len(c.EncryptionKeys) > 0 || c.EncKeysRaw.Reveal() != "" || c.EncKeysFile != ""
}

// LogValue logs the config with its secrets masked.
func (c Config) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("addr", c.Addr), slog.String("polyvAppId", c.AppID), slog.Any("polyvAppSecret", c.AppSecret),
		slog.String("polyvBaseUrl", redisconn.RedactURL(c.BaseURL)), slog.String("polyvTimeout", c.PolyvTimeout.String()),
		slog.Int("polyvRateLimit", c.RateLimit), slog.String("polyvSignMethod", c.SignMethod),
		slog.String("redis", redisconn.RedactURL(c.RedisURL)), slog.Bool("redisCluster", c.RedisCluster),
		slog.Int("apiKeys", c.Keys.Len()), slog.String("apiKeysFile", c.APIKeysFile), slog.String("auth", c.Auth),
		slog.Float64("bulkShare", c.BulkShare), slog.Any("encryptionKeys", encryptionKeyIDs(c.EncryptionKeys)),
		slog.Bool("tls", c.TLSCertFile != ""), slog.Bool("mtls", c.TLSClientCA != ""), slog.String("adminAddr", c.AdminAddr),
		slog.String("ttl", c.TTL.String()), slog.String("refreshAfter", c.RefreshAfter.String()), slog.String("negativeTtl", c.NegativeTTL.String()),
		slog.Int("localSize", c.LocalSize), slog.String("keyPrefix", c.KeyPrefix), slog.Bool("demo", c.Demo),
	)
}

// Format prints the config as LogValue does, whatever the verb.
func (c Config) Format(f fmt.State, _ rune) { fmt.Fprint(f, c.LogValue().String()) }

// parseEncryptionKeys reads id:base64 entries. Errors name the entry by its
// place and id, never its key.
func parseEncryptionKeys(s string) ([]cache.EncryptionKey, error) {
	var keys []cache.EncryptionKey
	var problems []string
	seen := map[string]bool{}
	for i, entry := range splitList(s) {
		id, b64, ok := strings.Cut(entry, ":")
		key, err := base64.StdEncoding.DecodeString(b64)
		switch {
		case !ok || id == "":
			problems = append(problems, fmt.Sprintf("entry %d: want id:base64", i+1))
		case seen[id]:
			problems = append(problems, fmt.Sprintf("entry %d (%q): the id %s is used twice; give each key an id of its own", i+1, id, id))
		case err != nil || len(key) != 32:
			problems = append(problems, fmt.Sprintf("entry %d (%q): want the base64 of 32 random bytes (openssl rand -base64 32)", i+1, id))
		default:
			seen[id] = true
			keys = append(keys, cache.EncryptionKey{ID: id, Key: key})
		}
	}
	if len(problems) > 0 {
		return nil, errors.New(strings.Join(problems, "\n"))
	}
	return keys, nil
}

// encryptionKeyIDs lists the keys' ids, the sealing one first.
func encryptionKeyIDs(keys []cache.EncryptionKey) []string {
	ids := make([]string, len(keys))
	for i, k := range keys {
		ids[i] = k.ID
	}
	return ids
}

// readKeysFile reads and parses an API keys file.
func readKeysFile(path string) (*httpapi.KeySet, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return httpapi.ParseKeysFile(b)
}

// prefixLines puts prefix before each line of text.
func prefixLines(prefix, text string) []string {
	lines := strings.Split(text, "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return lines
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	err := l.UnmarshalText([]byte(s))
	return l, err
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if p := strings.TrimSpace(part); p != "" {
			out = append(out, p)
		}
	}
	return out
}
