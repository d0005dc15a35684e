package main

import (
	"io"
	"strings"
	"testing"
)

// Configuration errors say what was given, where it was given, and what
// would be valid.
func TestConfigMessages(t *testing.T) {
	key := func(id string) string { return id + ":" + strings.Repeat("A", 43) + "=" }
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string
		not  []string
	}{
		{"a flag's value is named by the flag, as given", []string{"-ttl", "7h"}, nil,
			[]string{"-ttl=7h: "}, []string{"7h0m0s", "TOKENCACHE_TTL=7h"}},
		{"an environment value is named by the variable", nil, map[string]string{"TOKENCACHE_TTL": "7h"},
			[]string{"TOKENCACHE_TTL=7h: "}, []string{"7h0m0s"}},
		{"the same address twice", []string{"-addr", ":8080", "-admin-addr", "0.0.0.0:8080"}, nil,
			[]string{"-admin-addr=0.0.0.0:8080", ":8080", "same address"}, nil},
		{"a stray argument", []string{"serve"}, nil, []string{`unexpected arguments: ["serve"]`}, nil},
		{"an unknown log level", []string{"-log-level", "loud"}, nil, []string{"debug, info, warn or error"}, nil},
		{"one key id twice", nil, map[string]string{"TOKENCACHE_ENCRYPTION_KEYS": key("k1") + "," + key("k1")},
			[]string{`TOKENCACHE_ENCRYPTION_KEYS: entry 2 ("k1"): the id k1 is used twice`}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{"POLYV_APP_ID": "a", "POLYV_APP_SECRET": "s", "TOKENCACHE_API_KEYS": "k",
				"REDIS_URL": "redis://127.0.0.1:1", "TOKENCACHE_ENCRYPTION_KEYS": key("k0")}
			for k, v := range tc.env {
				env[k] = v
			}
			_, err := loadConfig(tc.args, envFunc(env), io.Discard)
			if err == nil {
				t.Fatal("loadConfig() = nil")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(err.Error(), n) {
					t.Errorf("error says %q:\n%v", n, err)
				}
			}
		})
	}
}
