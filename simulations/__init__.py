"""simulations: experiments that run `lsa`, compare with `theory`, and write tables and figures."""
