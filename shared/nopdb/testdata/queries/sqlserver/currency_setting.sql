SELECT s.[Value], s.[StoreId] FROM [Setting] s WHERE s.[Name] = 'currencysettings.primarystorecurrencyid' AND s.[StoreId] IN (0, @p1) ORDER BY s.[StoreId] DESC
