SELECT cu.[CurrencyCode] FROM [Currency] cu WHERE cu.[Id] = @p1
