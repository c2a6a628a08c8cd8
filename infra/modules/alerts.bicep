// Azure Monitor alerts, deployed only when main.bicep's alertEmail is set: an action group that
// emails that address, a metric alert on dead-lettered messages (any queue above zero, one alert per
// queue), and a log alert on the handler's error lines. The handler writes errors to stderr, which the
// Functions host logs at Error level: Application Insights traces with severityLevel 3 (4 is
// Critical). https://learn.microsoft.com/azure/azure-monitor/alerts/alerts-overview

@description('Tags put on every resource.')
param tags object

@description('Prefix of the alert resources\' names.')
param namePrefix string

@description('Address the alerts are emailed to.')
param alertEmail string

@description('Service Bus namespace name.')
param serviceBusNamespaceName string

@description('Queues watched for dead letters.')
param queueNames array

@description('Resource id of the Application Insights component the handler logs to.')
param applicationInsightsId string

@description('Location of the Application Insights component (log alerts live beside their data).')
param location string

@description('Error lines in 15 minutes above which the error alert fires.')
@minValue(0)
param errorAlertThreshold int = 10

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' existing = {
  name: serviceBusNamespaceName
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-admins'
  location: 'Global'
  tags: tags
  properties: {
    groupShortName: 'nopsync'
    enabled: true
    emailReceivers: [
      {
        name: 'admin'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// DeadletteredMessages is a gauge per queue (dimension EntityName; aggregations Average, Minimum,
// Maximum): the alert fires while any listed queue holds a dead letter, one alert per queue.
// https://learn.microsoft.com/azure/azure-monitor/reference/supported-metrics/microsoft-servicebus-namespaces-metrics
resource deadLetterAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = {
  name: '${namePrefix}-dead-letters'
  location: 'global'
  tags: tags
  properties: {
    description: 'A queue holds dead-lettered messages: see GET /api/deadletters/{entity} for the reasons (infra/README.md, "Watch it").'
    severity: 2
    enabled: true
    scopes: [
      namespace.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT5M'
    autoMitigate: true
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'DeadLetteredAboveZero'
          metricNamespace: 'Microsoft.ServiceBus/namespaces'
          metricName: 'DeadletteredMessages'
          dimensions: [
            {
              name: 'EntityName'
              operator: 'Include'
              values: queueNames
            }
          ]
          operator: 'GreaterThan'
          threshold: 0
          timeAggregation: 'Maximum'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

// The handler's stderr lines: the host logs them as Error (or Warning when they say "warn"), so
// severityLevel >= 3 counts errors and nothing else.
resource errorAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-handler-errors'
  location: location
  tags: tags
  properties: {
    displayName: '${namePrefix}: handler errors'
    description: 'The handler logged more than ${errorAlertThreshold} errors in 15 minutes (Application Insights traces, severityLevel >= 3).'
    severity: 2
    enabled: true
    scopes: [
      applicationInsightsId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          // host.json samples traces: each kept row stands for itemCount rows, so the
          // measure is their total, not the rows' count.
          query: 'traces | where severityLevel >= 3'
          metricMeasureColumn: 'itemCount'
          timeAggregation: 'Total'
          operator: 'GreaterThan'
          threshold: errorAlertThreshold
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

output actionGroupId string = actionGroup.id
