package tablestorage

import (
	"context"
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/data/aztables"
)

// A state store opened with a SAS connection string whose service can't be reached: the
// error (logged, and shown on the status page while the app starts) never holds the SAS
// signature, and still unwraps to the network error it is.
func TestSASSignatureNotInErrors(t *testing.T) {
	// aztables points a SAS connection string at https://<AccountName>.table.core.windows.net/;
	// an account nobody has (and, here, no network) fails below HTTP.
	const account = "nopsyncnosuchaccount0"
	const sig = "SECRETsig0123456789abcdefXYZ"
	conn := "AccountName=" + account + ";SharedAccessSignature=sv=2024-11-04&ss=t&srt=sco&sp=rwdlacu&se=2030-01-01T00:00:00Z&sig=" + sig
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := NewFromConnectionString(ctx, conn, Options{Table: "redact", ClientOptions: &aztables.ClientOptions{
		ClientOptions: azcore.ClientOptions{Retry: policy.RetryOptions{MaxRetries: -1}}}})
	if err == nil {
		t.Fatal("opened a store nobody serves")
	}
	if strings.Contains(err.Error(), sig) || strings.Contains(err.Error(), "sig=") {
		t.Fatalf("the SAS signature is in the error: %v", err)
	}
	var ue *url.Error
	var ne net.Error
	if !errors.As(err, &ue) || !errors.As(err, &ne) {
		t.Errorf("the error no longer unwraps to the network error: %T %v", err, err)
	}
	if !strings.Contains(err.Error(), account) {
		t.Errorf("the error lost where it went: %v", err)
	}
}
