package funchost

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
)

// FuzzHostPayload feeds the custom-handler decoders arbitrary invocation bodies: they
// must return an error or a value, never panic, and a decoded HTTP trigger must always
// build a request.
//
//	go test -run '^$' -fuzz FuzzHostPayload -fuzztime 60s ./shared/funchost
func FuzzHostPayload(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.json"))
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"Data":{"msg":"\"\\\"\\\"\""},"Metadata":{"DeliveryCount":"x"}}`))
	f.Add([]byte(`{"Data":{"req":{"Method":"POST","Url":"::","Body":{"a":1}}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		inv, err := DecodeInvocation(bytes.NewReader(b))
		if err != nil {
			return
		}
		for _, name := range []string{"msg", "req", "timer"} {
			inv.ServiceBus(name)
			inv.Timer(name)
			if tr, err := inv.HTTP(name); err == nil {
				if _, err := tr.Request(context.Background()); err != nil && tr.Method != "" && validMethod(tr.Method) {
					t.Errorf("decoded HTTP trigger (method %q, url %q) does not build a request: %v", tr.Method, tr.URL, err)
				}
			}
		}
		inv.MetadataString("MessageId")
		inv.MetadataInt("DeliveryCount")
		inv.MetadataTime("EnqueuedTime")
	})
}

// validMethod mirrors net/http's token rule for methods.
func validMethod(m string) bool {
	for _, r := range m {
		if r <= ' ' || r >= 0x7f || bytes.ContainsRune([]byte(`()<>@,;:\"/[]?={}`), r) {
			return false
		}
	}
	return m != ""
}
