package syncer

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"sync"

	"github.com/nopsync/nopsync/shared/dataverse"
	"github.com/nopsync/nopsync/shared/internal/cut"
)

// Setup problems are failures an administrator fixes in Dynamics 365 (a security role
// without a privilege, a pricing setting the app can't make exact). Retrying the message
// at once can't help, and redelivering it ten times only dead-letters it: the entity is
// recorded failed with the reason and marked for retry, the message is acknowledged,
// auto-sync re-sends the entity each period, and the status page says what to change.

// setup marks err as a setup problem.
func setup(err error) error {
	if err == nil {
		return nil
	}
	return &classified{err: err, transient: true, setup: true}
}

// Dataverse's privilege errors: PrivilegeDenied 0x80040220 and AccessDenied 0x80048405,
// HTTP 403 (learn.microsoft.com power-apps/developer/data-platform/reference/
// web-service-error-codes). The message names the privilege and the table: "Principal
// user (Id=…), is missing prvCreateContact privilege (Id=…) on OTC=2 for entity 'contact'".
var privilegeRe = regexp.MustCompile(`missing (prv(Create|Read|Write|Delete|Append|AppendTo|Assign|Share)\w*) privilege.*?entity '(\w+)'`)

// isSetup reports whether err is a setup problem.
func isSetup(err error) bool {
	var c *classified
	if errors.As(err, &c) && c.setup {
		return true
	}
	_, ok := missingPrivilege(err)
	return ok
}

// privilegeProblem is a privilege Dynamics 365 refused.
type privilegeProblem struct {
	privilege, operation, table string
	other                       string // another 403's message (privilege then holds its code)
}

// missingPrivilege finds a 403 refusal in err's chain. Every 403 Dataverse documents is
// a security setting an administrator changes (Learn, compose-http-requests-handle-errors,
// "Identify status codes": PrivilegeDenied, AccessDenied, the AttributePermission* and
// AttributePrivilege* codes of secured columns, CrmSecurityError, ...): retrying can't
// help until then. The two privilege codes name the privilege and table.
func missingPrivilege(err error) (privilegeProblem, bool) {
	var de *dataverse.Error
	if !errors.As(err, &de) || de.StatusCode != 403 || de.Auth {
		return privilegeProblem{}, false
	}
	code := strings.ToLower(de.Code)
	if code != "0x80040220" && code != "0x80048405" {
		return privilegeProblem{privilege: "403 " + code, other: cut.Runes(de.Message, 300)}, true
	}
	p := privilegeProblem{privilege: "a privilege", operation: "access", table: "a table"}
	if m := privilegeRe.FindStringSubmatch(de.Message); m != nil {
		p = privilegeProblem{privilege: m[1], operation: strings.ToLower(m[2]), table: m[3]}
	}
	return p, true
}

func (p privilegeProblem) String() string {
	if p.other != "" {
		return fmt.Sprintf("Dynamics 365 refused the application user (%s: %s): a security setting must allow it (its security role, or a field security profile for a secured column); change it in the Power Platform admin center, and auto-sync retries the entities it held back",
			p.privilege, p.other)
	}
	return fmt.Sprintf("Dynamics 365 refused to %s %s: the application user's security role lacks %s; add it to the role (Power Platform admin center > Environment > Settings > Users + permissions > Security roles), and auto-sync retries the entities it held back",
		p.operation, p.table, p.privilege)
}

// setupIssues are the setup problems syncs met, for the status page; an entry goes when
// an entity that failed with it syncs.
type setupIssues struct {
	mu     sync.Mutex
	issues map[string]string // key (privilege name) → what to change
}

// noteFailure records err's setup problem and returns the reason to record.
func (s *setupIssues) noteFailure(err error) string {
	p, ok := missingPrivilege(err)
	if !ok {
		return err.Error()
	}
	s.mu.Lock()
	if s.issues == nil {
		s.issues = map[string]string{}
	}
	s.issues[p.privilege] = p.String()
	s.mu.Unlock()
	return p.String() + " (" + err.Error() + ")"
}

// resolved drops the problems a previous failure reason named: that entity synced now.
func (s *setupIssues) resolved(prevReason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.issues {
		if strings.Contains(prevReason, k) {
			delete(s.issues, k)
		}
	}
}

// String lists the open problems, "" when there are none.
func (s *setupIssues) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, v := range s.issues {
		out = append(out, v)
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}
