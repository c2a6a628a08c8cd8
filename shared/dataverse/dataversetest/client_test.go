package dataversetest

import (
	"context"
	"testing"

	"github.com/nopsync/nopsync/shared/dataverse"
)

// Client is ready to use like httptest's: the server's URL, credentials and CA, the
// caller's other options; a secret the caller passes wins over the server's.
func TestClient(t *testing.T) {
	srv := NewServer(Options{})
	defer srv.Close()
	ctx := context.Background()
	c, err := srv.Client(dataverse.Options{MaxRetries: 1})
	if err != nil {
		t.Fatal(err)
	}
	who, err := c.WhoAmI(ctx)
	if err != nil || who.UserID != srv.UserID() {
		t.Fatalf("WhoAmI = %+v, %v", who, err)
	}
	bad, err := srv.Client(dataverse.Options{Secret: dataverse.StaticSecret("not-the-secret"), MaxRetries: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.WhoAmI(ctx); err == nil {
		t.Fatal("a client with a wrong secret got in")
	}
}
